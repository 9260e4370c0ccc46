"""``python -m rbfkern reproduce``: the papers' qualitative claims, checked on data that ships
(scikit-learn's digits), each with numbers averaged over seeds.

* structured receptive fields need less data than a plain CNN of equal depth (thesis ch. 3):
  :mod:`.srf_data_efficiency`, a data-efficiency curve;
* B-cos contributions localise (B-cos Sec. 4): :mod:`.bcos_localisation`, the 2x2 grid pointing game;
* CNN-RBF's learned metric retrieves better than Euclidean and cosine (CNN-RBF Fig. 7):
  :mod:`.cnn_rbf_retrieval`, precision@k.

:mod:`.table` holds the statistics (mean ± std, a paired verdict per claim), :mod:`.runner` the loop.
"""
from .runner import FULL, QUICK, Config, run

__all__ = ["Config", "FULL", "QUICK", "run"]
