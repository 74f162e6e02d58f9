"""KFP components: a decorator, a typed signature, a docstring and one call into ovpipe.tasks."""
