"""The Llama-family decoder with explicit exit and skip control, and what it is made of: its
configuration, rotary tables, the static KV cache shared by draft and verification, the identity of
its weights, and the draft adapter block (Kangaroo) that can sit on an exit layer; Gemma 3's text
decoder on the same API (``gemma3``, its config in ``gemma3_config``)."""
