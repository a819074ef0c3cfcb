"""Stream-based model serving on Bytewax: a data stream scored by models that arrive on a model stream."""
