"""Drop-in nn.Modules built on the rbfkern ops (one import line per family)."""
from .rbf import RBF, RBFClassifier, cluster_contributions, unsupervised_loss  # noqa: F401
from .rbf_network import RBFNetwork  # noqa: F401
from ..kmeans import init_centers, kmeans  # noqa: F401
from ..retrieval import similar  # noqa: F401
from .bcos import AddInverse, BcosConv2d, BcosLinear, LogitLayer, convert_to_bcos, explanation_mode  # noqa: F401
from .bcos_models import from_bcos  # noqa: F401
from .bcos_loss import BcosBCELoss, bcos_bce_loss  # noqa: F401
from .gauss_deriv import GaussDerivConv2d, GaussDerivConv3d  # noqa: F401
from .rfnin import RFNiN, RFNiNBlock  # noqa: F401
from .cnn_rbf import CNNRBF  # noqa: F401
