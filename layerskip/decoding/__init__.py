"""Decoding: the one loop (prefill, draft, verify, accept, stop) run with one ``Decoding``; the
verify/accept step (greedy prefix match, rejection sampling); sampling, stop words, limits; dynamic
exit and its criteria; chat prompts; and ``Strategy``, the one parsed description of how to decode."""
