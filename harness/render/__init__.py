"""Pictures of a model: the decision boundary over the feature plane and its PNG encoding.
Imports no trainer and no tracking."""
