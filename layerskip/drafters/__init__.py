"""Who proposes draft tokens: the ``Drafter`` interface and every drafter behind it (early exit,
layer-wise dynamic exit and layer skipping, the draft adapter, prompt lookup and its composition),
draft-length policies, the draft's frequency-ranked head, and ``DraftConfig``, which builds them."""
