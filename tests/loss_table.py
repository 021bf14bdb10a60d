"""What the tests know of each registered elementwise loss, keyed by its name: its array arguments and their
roles, sample values of its static options, the name of its 50-digit mpmath reference in ``reference.py`` and
the peers it is compared against. The package's registry (``jaxbce._registry.LOSSES``) only records the public
functions; ``test_loss_table.py`` checks that every one of them has a row here and that the rows match their
signatures, so adding a loss cannot skip the registry-driven tests.
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping

import jax

from jaxbce._arguments import Role
from jaxbce._registry import LOSSES as REGISTERED


@dataclasses.dataclass(frozen=True)
class Loss:
    """One row of the table, with the public function it describes.

    Attributes:
      name: the public name, ``jaxbce.<name>``.
      function: the public (jitted) function.
      arrays: its array arguments and their roles, in call order: the positional ones, then the optional
        keyword arrays other than ``weight`` and ``where`` (``pos_weight``, ``alpha``).
      options: its static options, each with sample values (the default first).
      reference: the name of its 50-digit mpmath reference in ``tests/reference.py``.
      peers: the functions of other libraries it is compared against (``bench/accuracy.py``).
    """

    name: str
    function: Callable[..., jax.Array]
    arrays: tuple[tuple[str, Role], ...]
    options: Mapping[str, tuple]
    reference: str
    peers: tuple[str, ...]

    @property
    def takes_weight(self) -> bool:
        return "weight" in inspect.signature(self.function).parameters

    @property
    def positional(self) -> tuple[str, ...]:
        """The names of the positional array arguments."""
        parameters = inspect.signature(self.function).parameters
        return tuple(name for name, _ in self.arrays if parameters[name].kind is not inspect.Parameter.KEYWORD_ONLY)


_ROWS = {
    "binary_cross_entropy_with_logits": dict(
        arrays=(("logits", Role.LOGITS), ("labels", Role.LABELS), ("pos_weight", Role.NON_NEGATIVE)),
        options={"label_smoothing": (0.0, 0.1), "poly_epsilon": (0.0, 1.0)},
        reference="bce_with_logits",
        peers=(
            "optax.sigmoid_binary_cross_entropy",
            "torch.nn.functional.binary_cross_entropy_with_logits",
            "keras.losses.binary_crossentropy",
        ),
    ),
    "binary_cross_entropy": dict(
        arrays=(("probs", Role.PROBABILITIES), ("labels", Role.LABELS), ("pos_weight", Role.NON_NEGATIVE)),
        options={"label_smoothing": (0.0, 0.1)},
        reference="bce_with_probabilities",
        peers=("torch.nn.functional.binary_cross_entropy", "keras.losses.binary_crossentropy(from_logits=False)"),
    ),
    "sigmoid_focal_loss": dict(
        arrays=(("logits", Role.LOGITS), ("labels", Role.LABELS), ("alpha", Role.FRACTION)),
        options={"gamma": (2.0, 0.0, 0.5, 1.7), "label_smoothing": (0.0, 0.1), "poly_epsilon": (0.0, 1.0, -1.0)},
        reference="sigmoid_focal",
        peers=(
            "optax.sigmoid_focal_loss",
            "torchvision.ops.sigmoid_focal_loss",
            "keras.losses.binary_focal_crossentropy",
        ),
    ),
    "asymmetric_loss": dict(
        arrays=(("logits", Role.LOGITS), ("labels", Role.LABELS), ("pos_weight", Role.NON_NEGATIVE)),
        options={"gamma_pos": (0.0, 1.0), "gamma_neg": (4.0, 0.0, 2.5), "clip": (0.05, 0.2, 0.0)},
        reference="asymmetric",
        peers=("timm.loss.AsymmetricLossMultiLabel",),
    ),
    "binary_entropy": dict(
        arrays=(("logits", Role.LOGITS),),
        options={},
        reference="binary_entropy",
        peers=("the textbook -p log p - (1 - p) log(1 - p)",),
    ),
    "binary_kl_divergence": dict(
        arrays=(("logits", Role.LOGITS), ("target_logits", Role.LOGITS)),
        options={},
        reference="binary_kl_divergence",
        peers=("the textbook softplus(x) - softplus(t) - sigmoid(t) (x - t)",),
    ),
}

LOSSES = {name: Loss(name, REGISTERED[name], **row) for name, row in _ROWS.items() if name in REGISTERED}
UNLISTED = sorted(set(REGISTERED) - set(_ROWS))  # test_loss_table fails while this is not empty
