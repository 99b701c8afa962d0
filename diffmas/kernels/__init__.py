"""CPU kernels: faster or batch-invariant versions of the model's products and attention.

- :mod:`~diffmas.kernels.packed`: linear layers on oneDNN-prepacked weights, sibling projections fused;
- :mod:`~diffmas.kernels.attention`: attention of short queries as plain matrix products;
- :mod:`~diffmas.kernels.exact`: batch-invariant inference (a row's results whatever its batch);
- :mod:`~diffmas.kernels.rows`: padding products of few rows to the kernel path of larger ones.

They plug into a Hugging Face model through transformers' ``AttentionInterface`` and by changing
the class of its ``nn.Linear`` layers; the model itself is not forked.
"""
