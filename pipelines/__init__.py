"""KFP pipelines: wiring of components only."""
