"""Adapters that let other evaluation harnesses drive a fusevlm model.

* :mod:`.lmms_eval`: ``FuseVLM``, an lmms-eval model (``generate_until``, ``loglikelihood``);
* :mod:`.vlmevalkit`: ``FuseVLM``, a VLMEvalKit model (``generate_inner``).

Neither harness is a dependency: each module subclasses the harness's base class when it is installed
and a stand-in with the same interface otherwise. Import the module you need (they load no model until
the class is instantiated).
"""
