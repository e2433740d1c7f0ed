"""The Python API, in the shape users know from vLLM: ``LLM`` (a model and its decoding strategy, loaded
once) with ``generate``, ``chat`` and ``stream``, ``SamplingParams`` per request, and ``RequestOutput``
results (``from layerskip import LLM, SamplingParams``)."""

from layerskip.api.llm import LLM
from layerskip.api.outputs import CompletionOutput, RequestOutput
from layerskip.api.params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
