"""Inference engines that tierbench drives: `reference/` (the in-repo engine), launchers for vLLM
and the reference server, a client for any OpenAI-compatible endpoint, and the tiny-model builder.

May import: traces/ (only to materialize token ids), the standard library and third-party packages.
"""
