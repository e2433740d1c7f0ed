"""Decoding: the one loop (``engine``: a step-level engine over a batch of rows — prefill, draft, verify,
accept, stop per row — with continuous batching) run with one ``Decoding``; ``generate`` and
``generate_many`` over it; the verify/accept step (greedy prefix match, rejection sampling, per row);
sampling, stop words, limits; dynamic exit and its criteria; chat prompts; and ``Strategy``, the one
parsed description of how to decode."""
