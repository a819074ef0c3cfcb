"""Stream-based model serving on Bytewax: a data stream scored by models that arrive on a model stream."""

from flows import moved

moved.install()  # recovery snapshots written before the layout by layer name the old module paths
