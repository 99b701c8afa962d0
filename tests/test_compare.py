"""`diffmas compare`: Markdown, CSV, plot and a self-contained HTML report that renders in Chromium."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from diffmas.cli import main
from diffmas.compare import mcnemar_p

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for method in ("single", "latent_mas"):
        assert (
            main(
                [
                    "eval",
                    "--model",
                    tiny_model_dir,
                    "--dtype",
                    "float32",
                    "--task",
                    "synthetic-arith",
                    "--limit",
                    "3",
                    "--batch-size",
                    "3",
                    "--max-new-tokens",
                    "4",
                    "--latent-steps",
                    "2",
                    "--method",
                    method,
                    "--out",
                    str(root / method),
                ]
            )
            == 0
        )
    return root


def test_compare_writes_table_csv_plot_and_html(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(runs / "single"), str(runs / "latent_mas"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| single" in text and "| latent_mas" in text and "95% CI" in text
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    summaries = {m: json.loads((runs / m / "summary.json").read_text()) for m in ("single", "latent_mas")}
    assert [r["method"] for r in rows] == ["single", "latent_mas"]
    assert all(r["model"] == summaries[r["method"]]["model"] for r in rows)
    for row in rows:
        assert float(row["accuracy"]) == summaries[row["method"]]["accuracy"]
        assert float(row["generated_tokens"]) == summaries[row["method"]]["mean_generated_tokens"]
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and 'src="http' not in page  # self-contained
    task, model = summaries["single"]["task"], summaries["single"]["model"]
    assert f"<title>{task} on {model}: 2 runs</title>" in page  # the default title says what was compared
    # A parent directory of runs works too, and the same run twice gets distinct labels.
    assert main(["compare", str(runs), str(runs / "single"), "--out", str(tmp_path / "c2")]) == 0
    labels = [r["run"] for r in csv.DictReader(open(tmp_path / "c2" / "comparison.csv"))]
    assert sorted(labels) == ["latent_mas", "single", "single (2)"]


def test_compare_errors_are_clear(runs, tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", str(empty)]) == 1
    assert "no summary.json" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(runs / "single", broken)
    (broken / "summary.json").write_text('{"accuracy": 0.5, "meth')
    assert main(["compare", str(broken)]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def _fake_run(path, method, task, correct: dict[str, bool], extra_records=(), records=True):
    path.mkdir(parents=True)
    acc = sum(correct.values()) / len(correct)
    (path / "summary.json").write_text(
        json.dumps(
            {
                "method": method,
                "task": task,
                "n": len(correct),
                "accuracy": acc,
                "ci95": [0.0, 1.0],
                "mean_generated_tokens": 10.0,
                "mean_latent_steps": 0.0,
                "mean_seconds": 1.0,
            }
        )
    )
    if records:
        lines = [{"id": i, "correct": c} for i, c in correct.items()] + list(extra_records)
        (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"id": "torn')


def test_a_run_in_progress_is_compared_on_the_records_it_has(runs, tmp_path, capsys):
    """An evaluation stopped before its summary: summarised from its records, labelled partial,
    its figures those of a finished run of the same records."""
    partial = tmp_path / "latent_mas"
    shutil.copytree(runs / "latent_mas", partial)
    (partial / "summary.json").unlink()
    lines = (partial / "records.jsonl").read_text().splitlines(keepends=True)
    (partial / "records.jsonl").write_text("".join(lines[:2]))
    assert main(["compare", str(runs / "single"), str(partial), "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "latent_mas (partial: 2 of 3)" in text
    row = next(r for r in csv.DictReader(open(tmp_path / "cmp" / "comparison.csv")) if "partial" in r["run"])
    kept = [json.loads(line) for line in lines[:2]]
    assert int(row["n"]) == 2 and float(row["accuracy"]) == sum(r["correct"] for r in kept) / 2
    paired = list(csv.DictReader(open(tmp_path / "cmp" / "paired.csv")))
    assert [int(p["shared"]) for p in paired] == [2]
    (partial / "records.jsonl").write_text("")
    assert main(["compare", str(partial)]) == 1
    assert "no records yet" in capsys.readouterr().err


def test_mcnemar_p_values():
    assert mcnemar_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # binomial(12, 1/2) tails
    assert mcnemar_p(2, 10) == mcnemar_p(10, 2)
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_p(3, 3) == 1.0 and mcnemar_p(0, 0) == 1.0


def test_compare_pairs_runs_on_their_shared_problems(tmp_path, capsys):
    a = {f"p{i}": i < 8 for i in range(20)}  # right on p0-p7
    b = {f"p{i}": 5 <= i < 9 for i in range(2, 22)}  # right on p5-p8; p0, p1 unseen, p20, p21 extra
    _fake_run(tmp_path / "a", "diffmas", "gsm8k", a, extra_records=[{"id": "p9", "correct": True, "sample": 1}])
    _fake_run(tmp_path / "b", "single_sft", "gsm8k", b)
    _fake_run(tmp_path / "other-task", "single", "arc_easy", {"p0": True})
    _fake_run(tmp_path / "no-records", "single", "gsm8k", {"p0": True}, records=False)
    runs = [str(tmp_path / n) for n in ("a", "b", "other-task", "no-records")]
    assert main(["compare", *runs, "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "exact McNemar" in text
    pairs = list(csv.DictReader(open(tmp_path / "cmp" / "paired.csv")))
    assert len(pairs) == 1  # other tasks and runs without records are not paired
    (pair,) = pairs
    # Shared: p2-p19 (18 problems). a right on p2-p7, b right on p5-p8: both p5-p7, only a p2-p4, only b p8.
    assert (pair["a"], pair["b"], pair["shared"], pair["both"], pair["only_a"], pair["only_b"]) == (
        "a",
        "b",
        "18",
        "3",
        "3",
        "1",
    )
    assert float(pair["p_value"]) == pytest.approx(mcnemar_p(3, 1)) and float(pair["difference"]) == pytest.approx(
        2 / 18
    )
    assert "+11.1 pts" in text and 'id="paired"' in (tmp_path / "cmp" / "report.html").read_text()


def chromium_driver():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("headless Chromium needs the Debian packages chromium and chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_html_report_renders_in_headless_chromium(runs, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", str(runs / "single"), str(runs / "latent_mas"), "--out", str(out)]) == 0
    browser = chromium_driver()
    try:
        browser.get((out / "report.html").as_uri())
        from selenium.webdriver.common.by import By

        rows = browser.find_elements(By.CSS_SELECTOR, "#comparison tbody tr")
        assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == ["single", "latent_mas"]
        header = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#comparison th")]
        assert "accuracy" in header and "95% CI" in header
        width, height = browser.execute_script(
            "const img = document.getElementById('accuracy-plot');"
            "return [img.complete ? img.naturalWidth : 0, img.getBoundingClientRect().height];"
        )
        assert width > 500 and height > 100  # the embedded plot decoded and is laid out
        pairs = browser.find_elements(By.CSS_SELECTOR, "#paired tbody tr")  # both runs answered the same 3
        assert [[td.text for td in r.find_elements(By.TAG_NAME, "td")][:3] for r in pairs] == [
            ["single", "latent_mas", "3"]
        ]
    finally:
        browser.quit()


def summary(accuracy=0.5, chance=0.25, failures=0, n=40):
    return {
        "method": "latent_mas",
        "task": "arc_challenge",
        "n": n,
        "accuracy": accuracy,
        "chance": chance,
        "extraction_failures": failures,
    }


def test_warnings_flag_below_chance_and_unreadable_outputs():
    from diffmas.report import warnings

    assert warnings(summary()) == []
    assert warnings(summary(chance=None, accuracy=0.0)) == []  # math: guessing scores ~0, nothing to flag
    assert warnings(summary(failures=2)) == []  # 5% of 40 is the line, not over it
    below, unread = warnings(summary(accuracy=0.2, failures=3))
    assert "below chance (25.0%)" in below and "20.0%" in below
    assert "3 of 40 outputs" in unread
    # Several samples per problem: failures are counted over every answer, cued answers over the first.
    assert warnings({**summary(failures=3), "answers": 80}) == []
    (cued,) = warnings({**summary(), "answers": 80, "answers_cued": 3})
    assert "3 of 40 answers (8%) named none until the answer cue" in cued


def test_chance_of_multiple_choice_examples():
    from diffmas.tasks import Example, get_task

    exs = [
        Example(id="a", question="q", gold="A", meta={"labels": list("ABCD")}),
        Example(id="b", question="q", gold="B", meta={"choices": ["x", "y"]}),
    ]
    assert get_task("arc_challenge").chance(exs) == pytest.approx((0.25 + 0.5) / 2)
    assert get_task("gsm8k").chance(exs) is None
