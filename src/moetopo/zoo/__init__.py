"""The model zoo: small MoE checkpoints trained offline on the Python standard library.

Model hubs are unreachable from moetopo's build machines, so the default input is a set
of tiny real-architecture models (Mixtral, Qwen2-MoE, DeepSeek-V3, OLMoE) trained here,
reproducibly, by ``python -m moetopo.zoo``. Building needs the ``zoo`` extra (torch,
transformers); reading the shipped zoo needs neither, and importing this package does
not import them.
"""
