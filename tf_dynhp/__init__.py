"""tf_dynhp: Dynamic Hard Pruning (DynHP) for Keras 3."""
