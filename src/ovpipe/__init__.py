"""ovpipe: LLaVA-OneVision-1.5 training system as a KFP v2 DAG. Imports no kfp."""
__version__ = "0.1.0"
