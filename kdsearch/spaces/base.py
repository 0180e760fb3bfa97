"""SearchSpace: a family of networks (code) whose ranges are set by a YAML file (data).

A space YAML looks like::

    name: resnet_cifar              # Arch.space of every arch it produces
    family: resnet_cifar            # a name in SPACES: the code that builds the networks
    description: one line           # optional
    genes:
      depths: {choices: [1, 2, 3], length: 3}   # a list gene: 3 positions, each one of the choices
      widths: {choices: [8, 16], length: 3}
      block: {choices: [basic]}                 # a scalar gene
      # {value: X} fixes a gene: it is part of every arch but never searched
    teacher: {depths: [9, 9, 9], widths: [16, 32, 64], block: basic}
    form: imagenet                  # optional: cifar | imagenet; left out, the image size decides

Every gene the family declares in :attr:`SearchSpace.gene_specs` must be present; nothing
else may be. Optuna parameters are flat and fixed-length: a scalar gene ``block`` is the
parameter ``block``; position ``i`` of a list gene ``depths`` is ``depth_i`` (a trailing
"s" is dropped). Fixed genes have no parameter.

Forms: a family builds its ``cifar`` form for inputs under 64 px and its ``imagenet`` form
(strided stem, total stride 32) from 64 px on (:func:`kdsearch.arch.form_for_image_size`);
:meth:`SearchSpace.suggest` and :meth:`SearchSpace.sample` take the image size and record the
form in the arch, which :meth:`SearchSpace.build` follows. A YAML may state ``form:`` to use
one form at every size. Anywhere under ``genes`` or ``teacher``, a mapping keyed by forms
gives a value per form, e.g. ``strides: {value: {cifar: [1, 2, 2, 1], imagenet: [2, 2, 2, 2]}}``;
both forms need an entry unless the YAML states its form.
"""
from __future__ import annotations

import copy
import math
import random
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from kdsearch.arch import FORMS, Arch, form_for_image_size
from kdsearch.errors import ModelError, SpaceError
from kdsearch.models.base import ImageClassifier
from kdsearch.registry import Registry

if TYPE_CHECKING:
    import optuna

__all__ = ["SPACES", "SearchSpace", "GeneSpec", "Gene", "space_from_config"]

SPACES: Registry[type["SearchSpace"]] = Registry("search space family")

_TOP_KEYS = ("name", "family", "description", "form", "genes", "teacher")
_REQUIRED_TOP = ("name", "family", "genes", "teacher")
_GENE_KEYS = ("choices", "length", "value")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


@dataclass(frozen=True)
class GeneSpec:
    """What a family accepts for one gene, whatever a YAML's ranges say.

    Attributes:
        type: type of each value: ``int``, ``float`` (any real number), ``bool`` or ``str``.
        is_list: the gene is a list (one value per stage/edge) rather than one value.
        length: the list length the family requires; None: any, but equal across the
            family's list genes that leave it open.
        allowed: the only values the family can build, if it is a closed set.
        minimum: smallest value (numbers).
        maximum: largest value (numbers).
    """

    type: type
    is_list: bool = False
    length: int | None = None
    allowed: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def problem(self, value: Any) -> str | None:
        """Why one value (one list element) is not buildable, or None."""
        if self.type is bool:
            ok_type = isinstance(value, bool)
        elif self.type is float:  # any real number; YAML writes 2 for 2.0
            ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:  # bool is an int subclass: true is not a depth
            ok_type = isinstance(value, self.type) and not isinstance(value, bool)
        if not ok_type:
            return f"{value!r} is not {_TYPE_WORDS[self.type]}"
        if self.allowed is not None and value not in self.allowed:
            return f"{value!r} is not one of {', '.join(map(str, self.allowed))}"
        if self.minimum is not None and value < self.minimum:
            return f"{value!r} is below the minimum {self.minimum:g}"
        if self.maximum is not None and value > self.maximum:
            return f"{value!r} is above the maximum {self.maximum:g}"
        return None


@dataclass(frozen=True)
class Gene:
    """One gene as a space declares it: searched over ``choices`` or fixed to ``value``."""

    name: str
    choices: tuple[Any, ...] | None  # None: fixed
    length: int | None  # list genes: number of positions
    value: Any = None  # fixed genes only

    @property
    def fixed(self) -> bool:
        return self.choices is None

    def param_names(self) -> list[str]:
        """The flat Optuna parameter names of this gene, in order."""
        if self.fixed:
            return []
        if self.length is None:
            return [self.name]
        prefix = self.name[:-1] if self.name.endswith("s") and len(self.name) > 1 else self.name
        return [f"{prefix}_{i}" for i in range(self.length)]


def _same(a: Any, b: Any) -> bool:
    """Equality that tells ``True`` from ``1`` and ``2`` from ``2.0`` apart from ``"2"``."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return isinstance(a, bool) == isinstance(b, bool) and a == b


class SearchSpace(ABC):
    """Base of the space families: genes declared by the family, ranges read from a YAML.

    Subclasses set :attr:`family` and :attr:`gene_specs`, implement :meth:`build_model` (for
    both forms), and may override :meth:`combination_problem` (an arch whose genes clash) and
    :meth:`space_problem` (ranges that would let the sampler produce such an arch).

    The search calls :meth:`suggest` once per Optuna trial (with the data's image size), :meth:`params` to seed a study
    with known archs (``study.enqueue_trial``), :meth:`build` once per candidate.

    Args:
        config: the parsed YAML (see the module docstring); kept as :attr:`definition`, which
            :func:`space_from_config` turns back into the same space.
        source: where ``config`` came from, for error messages.
    """

    family: ClassVar[str]
    gene_specs: ClassVar[Mapping[str, GeneSpec]]
    # top-level YAML keys the family reads beyond the common ones (what, besides the genes, makes its networks)
    family_keys: ClassVar[tuple[str, ...]] = ()
    # whether the latency model may time the family's networks block by block, as chains of known blocks
    timed_by_parts: ClassVar[bool] = True

    def __init__(self, config: Mapping[str, Any], source: str = "<config>") -> None:
        self.source = source
        _check_top_level(config, source, self.family_keys)
        # kept with every run and model file that names an arch of this space, so the arch
        # rebuilds where the YAML is not (moved, deleted, another machine)
        self.definition: dict[str, Any] = copy.deepcopy(dict(config))
        self.name: str = config["name"]
        self.description: str = config.get("description") or ""
        if not isinstance(self.description, str):
            raise self._error("'description' must be a string")
        form = config.get("form")
        if form is not None and form not in FORMS:
            raise self._error(
                f"unknown form {form!r}; write one of {', '.join(FORMS)}, or leave 'form' out to pick it "
                f"from the image size"
            )
        self.form: str | None = form  # None: chosen per image size by form_for
        self._genes_by_form: dict[str, dict[str, Gene]] = {}
        self._teachers: dict[str, Arch] = {}
        for f in (form,) if form else FORMS:
            genes = self._parse_genes(self._for_form(config["genes"], f, "genes"))
            problem = self.space_problem(genes)
            if problem:
                raise self._error(problem)
            self._genes_by_form[f] = genes
            self._teachers[f] = self._parse_teacher(self._for_form(config["teacher"], f, "teacher"), genes, f)
        # the genes of the stated form, else of the cifar form (both forms have the same parameters)
        self.genes: dict[str, Gene] = next(iter(self._genes_by_form.values()))

    # -- the family's part -------------------------------------------------------------

    @abstractmethod
    def build_model(self, genes: Mapping[str, Any], num_classes: int, in_channels: int, form: str) -> ImageClassifier:
        """Construct the network in ``form`` for genes already checked against the family."""

    def combination_problem(self, genes: Mapping[str, Any]) -> str | None:
        """Why genes that are each valid cannot be built together, or None."""
        return None

    def space_problem(self, genes: Mapping[str, Gene]) -> str | None:
        """Why these ranges (of one form) admit unbuildable combinations, or None (called at load)."""
        return None

    # -- public API --------------------------------------------------------------------

    def form_for(self, image_size: int | tuple[int, int] | None = None) -> str:
        """The form to build for inputs of ``image_size``: the YAML's ``form`` if stated, else
        ``imagenet`` from 64 px on, else (and when the size is unknown) ``cifar``."""
        if self.form is not None:
            return self.form
        return "cifar" if image_size is None else form_for_image_size(image_size)

    def genes_for(self, form: str) -> dict[str, Gene]:
        """The genes (ranges) of ``form``; a space that states its form has no other."""
        if form not in self._genes_by_form:
            raise SpaceError(
                f"space {self.name!r} is for the {self.form} form only, not {form}; use an arch from this "
                f"space or a space without 'form:'"
            )
        return self._genes_by_form[form]

    def suggest(self, trial: "optuna.Trial", image_size: int | tuple[int, int] | None = None) -> Arch:
        """Ask ``trial`` for every searched gene (categorical, flat names) and return the arch,
        in the form for ``image_size`` (see :meth:`form_for`)."""
        form = self.form_for(image_size)
        genes: dict[str, Any] = {}
        for gene in self.genes_for(form).values():
            if gene.fixed:
                genes[gene.name] = gene.value
            else:
                values = [trial.suggest_categorical(p, list(gene.choices)) for p in gene.param_names()]
                genes[gene.name] = values if gene.length is not None else values[0]
        return Arch(self.name, genes, form)

    def sample(self, rng: random.Random, image_size: int | tuple[int, int] | None = None) -> Arch:
        """Draw an arch uniformly from the space, in the form for ``image_size``; the same
        ``rng`` state gives the same arch."""
        form = self.form_for(image_size)
        genes: dict[str, Any] = {}
        for gene in self.genes_for(form).values():
            if gene.fixed:
                genes[gene.name] = gene.value
            elif gene.length is None:
                genes[gene.name] = rng.choice(gene.choices)
            else:
                genes[gene.name] = [rng.choice(gene.choices) for _ in range(gene.length)]
        return Arch(self.name, genes, form)

    def params(self, arch: Arch) -> dict[str, Any]:
        """The flat Optuna parameters :meth:`suggest` would produce for ``arch``."""
        self.validate(arch)
        out: dict[str, Any] = {}
        for gene in self.genes_for(arch.form).values():
            if gene.fixed:
                continue
            values = arch.genes[gene.name] if gene.length is not None else [arch.genes[gene.name]]
            out.update(zip(gene.param_names(), values))
        return out

    def validate(self, arch: Arch, image_size: int | tuple[int, int] | None = None) -> None:
        """Fail with :class:`SpaceError` unless ``arch`` is a member of this space (and, given
        ``image_size``, in the form this space builds for it)."""
        self._check_family(arch, f"arch {arch.key}")
        if image_size is not None and arch.form != self.form_for(image_size):
            raise SpaceError(
                f"arch {arch.key} is in the {arch.form} form but space {self.name!r} builds the "
                f"{self.form_for(image_size)} form for {image_size} px images; use an arch searched at this size"
            )
        for gene in self.genes_for(arch.form).values():
            value = arch.genes[gene.name]
            if gene.fixed:
                if not _same(value, gene.value):
                    raise SpaceError(
                        f"gene {gene.name!r} = {value!r} is outside space {self.name!r}: it is fixed to "
                        f"{gene.value!r}; use an arch from this space or the space the arch came from"
                    )
                continue
            values = value if gene.length is not None else [value]
            if gene.length is not None and len(values) != gene.length:
                raise SpaceError(
                    f"gene {gene.name!r} has {len(values)} values but space {self.name!r} has {gene.length} "
                    f"positions; use an arch from this space"
                )
            for i, v in enumerate(values):
                if not any(_same(v, c) for c in gene.choices):
                    where = f"{gene.name}[{i}]" if gene.length is not None else gene.name
                    raise SpaceError(
                        f"gene {where} = {v!r} is outside space {self.name!r}: allowed "
                        f"{', '.join(map(repr, gene.choices))}; use an arch from this space"
                    )

    def build(self, arch: Arch, num_classes: int, in_channels: int) -> ImageClassifier:
        """Build a freshly initialised network for ``arch``, in the arch's form.

        Only the family's rules are checked (not this YAML's ranges), so a teacher larger
        than the space, or a zoo model of the family, builds too; call :meth:`validate`
        first to insist on membership.
        """
        for what, n in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ModelError(f"{what} must be a positive integer, got {n!r}")
        self._check_family(arch, f"arch {arch.key}")
        return self.build_model(arch.genes, num_classes, in_channels, arch.form)

    def teacher(self, image_size: int | tuple[int, int] | None = None) -> Arch:
        """A large member of the family, from the YAML's ``teacher:`` genes, in the form for ``image_size``."""
        return self._teachers[self.form_for(image_size)]

    def size(self, image_size: int | tuple[int, int] | None = None) -> int:
        """How many distinct archs the space holds (in the form for ``image_size``)."""
        genes = self.genes_for(self.form_for(image_size))
        return math.prod(len(g.choices) ** (g.length or 1) for g in genes.values() if not g.fixed)

    def param_names(self, image_size: int | tuple[int, int] | None = None) -> list[str]:
        """Every flat Optuna parameter name, in suggestion order (in the form for ``image_size``)."""
        return [p for g in self.genes_for(self.form_for(image_size)).values() for p in g.param_names()]

    def describe(self) -> str:
        """One line: name, family, description and size (of the CIFAR form unless the space states one)."""
        text = f"{self.name} ({self.family})"
        if self.description:
            text += f": {self.description}"
        return f"{text} [{len(self.param_names())} params, {self.size():.3g} archs]"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, source={self.source!r})"

    # -- checks ------------------------------------------------------------------------

    def _error(self, what: str) -> SpaceError:
        return SpaceError(f"search space {self.source}: {what}")

    def _for_form(self, raw: Any, form: str, where: str) -> Any:
        """``raw`` with every mapping keyed by forms (``{cifar: X, imagenet: Y}``) replaced by its ``form`` entry."""
        if isinstance(raw, Mapping):
            if raw and all(k in FORMS for k in raw):
                if form not in raw:
                    raise self._error(
                        f"{where} gives values for {', '.join(raw)} but not for the {form} form; add "
                        f"'{form}: ...' or state the space's form with a top-level 'form:'"
                    )
                return self._for_form(raw[form], form, where)
            return {k: self._for_form(v, form, f"{where}.{k}") for k, v in raw.items()}
        if isinstance(raw, list):
            return [self._for_form(v, form, where) for v in raw]
        return raw

    def _check_family(self, arch: Arch, where: str) -> None:
        """Fail unless ``arch`` is of this space and its genes are buildable by the family."""
        if arch.space != self.name:
            raise SpaceError(
                f"{where} belongs to space {arch.space!r}, not {self.name!r}; load the space it came from"
            )
        problem = self._genes_problem(arch.genes)
        if problem:
            raise SpaceError(f"{where}: {problem}")

    def _genes_problem(self, genes: Mapping[str, Any]) -> str | None:
        missing = [n for n in self.gene_specs if n not in genes]
        unknown = [n for n in genes if n not in self.gene_specs]
        if missing or unknown:
            parts = ([f"missing gene(s) {', '.join(missing)}"] if missing else []) + (
                [f"unknown gene(s) {', '.join(unknown)}"] if unknown else []
            )
            return f"{'; '.join(parts)}; the {self.family} family has genes {', '.join(self.gene_specs)}"
        open_lengths: dict[str, int] = {}
        for name, spec in self.gene_specs.items():
            value = genes[name]
            if spec.is_list:
                if not isinstance(value, list):
                    return f"gene {name!r} must be a list, got {value!r}"
                if spec.length is not None and len(value) != spec.length:
                    return f"gene {name!r} must have {spec.length} values, got {len(value)}"
                if not value:
                    return f"gene {name!r} must not be empty"
                if spec.length is None:
                    open_lengths[name] = len(value)
                for i, v in enumerate(value):
                    problem = spec.problem(v)
                    if problem:
                        return f"gene {name}[{i}] = {problem}"
            else:
                problem = spec.problem(value)
                if problem:
                    return f"gene {name!r} = {problem}"
        if len(set(open_lengths.values())) > 1:
            listed = ", ".join(f"{n}: {k}" for n, k in open_lengths.items())
            return f"per-stage genes must have the same length ({listed})"
        return self.combination_problem(genes)

    def _parse_genes(self, raw: Any) -> dict[str, Gene]:
        if not isinstance(raw, Mapping) or not raw:
            raise self._error("'genes' must be a mapping of gene name -> {choices: [...]} or {value: ...}")
        unknown = [n for n in raw if n not in self.gene_specs]
        if unknown:
            raise self._error(
                f"unknown gene(s) {', '.join(map(str, unknown))} for family {self.family!r}; "
                f"its genes are {', '.join(self.gene_specs)}"
            )
        missing = [n for n in self.gene_specs if n not in raw]
        if missing:
            raise self._error(
                f"missing gene(s) {', '.join(missing)}; the {self.family} family needs all of "
                f"{', '.join(self.gene_specs)} (use {{value: ...}} to fix one)"
            )
        genes = {name: self._parse_gene(name, raw[name]) for name in self.gene_specs}
        open_lengths = {
            n: (g.length if not g.fixed else len(g.value))
            for n, g in genes.items()
            if self.gene_specs[n].is_list and self.gene_specs[n].length is None
        }
        if len(set(open_lengths.values())) > 1:
            listed = ", ".join(f"{n}: {k}" for n, k in open_lengths.items())
            raise self._error(f"per-stage genes must have the same length; got {listed}")
        seen: dict[str, str] = {}
        for gene in genes.values():
            for p in gene.param_names():
                if p in seen:
                    raise self._error(f"genes {seen[p]!r} and {gene.name!r} both give the Optuna parameter {p!r}")
                seen[p] = gene.name
        return genes

    def _parse_gene(self, name: str, raw: Any) -> Gene:
        spec = self.gene_specs[name]
        shape = "{choices: [...], length: N}" if spec.is_list else "{choices: [...]}"
        if not isinstance(raw, Mapping):
            raise self._error(f"gene {name!r} must be a mapping like {shape} or {{value: ...}}, got {raw!r}")
        unknown = [k for k in raw if k not in _GENE_KEYS]
        if unknown:
            raise self._error(
                f"gene {name!r} has unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(_GENE_KEYS)}"
            )
        if ("choices" in raw) == ("value" in raw):
            raise self._error(f"gene {name!r} needs exactly one of 'choices' (searched) or 'value' (fixed)")
        if "value" in raw:
            if "length" in raw:
                raise self._error(f"gene {name!r}: 'length' goes with 'choices', not with a fixed 'value'")
            value = raw["value"]
            values = value if spec.is_list else [value]
            if spec.is_list:
                self._check_length(name, spec, len(value) if isinstance(value, list) else None, "its value")
            for v in values:
                self._check_choice(name, spec, v)
            return Gene(name, None, len(value) if spec.is_list else None, list(value) if spec.is_list else value)
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise self._error(f"gene {name!r}: 'choices' must be a non-empty list, got {choices!r}")
        for c in choices:
            self._check_choice(name, spec, c)
        for i, c in enumerate(choices):
            if any(_same(c, d) for d in choices[:i]):
                raise self._error(f"gene {name!r}: choice {c!r} is listed twice (it would be sampled twice as often)")
        length = raw.get("length")
        if spec.is_list:
            if length is None:
                raise self._error(f"gene {name!r} is a list gene: add 'length' (the number of positions)")
            self._check_length(name, spec, length, "'length'")
        elif length is not None:
            raise self._error(f"gene {name!r} takes one value; remove 'length'")
        return Gene(name, tuple(choices), length if spec.is_list else None)

    def _check_length(self, name: str, spec: GeneSpec, length: Any, what: str) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise self._error(f"gene {name!r}: {what} must be a positive integer list length, got {length!r}")
        if spec.length is not None and length != spec.length:
            raise self._error(f"gene {name!r}: the {self.family} family needs length {spec.length}, got {length}")

    def _check_choice(self, name: str, spec: GeneSpec, value: Any) -> None:
        problem = spec.problem(value)
        if problem:
            raise self._error(f"gene {name!r}: {problem}; the {self.family} family accepts {_describe_spec(spec)}")

    def _parse_teacher(self, raw: Any, space_genes: Mapping[str, Gene], form: str) -> Arch:
        if not isinstance(raw, Mapping):
            raise self._error("'teacher' must be a mapping of gene -> value (a large member of the family)")
        genes = {g.name: g.value for g in space_genes.values() if g.fixed}  # fixed genes may be left out
        genes.update(raw)
        problem = self._genes_problem(genes)
        if problem:
            raise self._error(f"teacher: {problem}")
        return Arch(self.name, {n: genes[n] for n in self.gene_specs}, form)


def _describe_spec(spec: GeneSpec) -> str:
    if spec.allowed is not None:
        return ", ".join(map(str, spec.allowed))
    text = {int: "integers", float: "numbers", bool: "true/false", str: "strings"}[spec.type]
    if spec.minimum is not None and spec.maximum is not None:
        return f"{text} from {spec.minimum:g} to {spec.maximum:g}"
    if spec.minimum is not None:
        return f"{text} >= {spec.minimum:g}"
    return text


def _check_top_level(config: Any, source: str, family_keys: tuple[str, ...] = ()) -> None:
    if not isinstance(config, Mapping):
        raise SpaceError(f"search space {source}: the file must hold a mapping with keys {', '.join(_REQUIRED_TOP)}")
    allowed = (*_TOP_KEYS, *family_keys)
    unknown = [k for k in config if k not in allowed]
    if unknown:
        raise SpaceError(
            f"search space {source}: unknown top-level key(s) {', '.join(map(str, unknown))}; "
            f"allowed: {', '.join(allowed)}"
        )
    missing = [k for k in _REQUIRED_TOP if k not in config]
    if missing:
        raise SpaceError(f"search space {source}: missing key(s) {', '.join(missing)}")
    name = config["name"]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SpaceError(
            f"search space {source}: 'name' must be a word of letters, digits, '_', '-' or '.', got {name!r}"
        )


def space_from_config(config: Mapping[str, Any], source: str = "<config>") -> SearchSpace:
    """Build the space a parsed YAML describes; its ``family`` picks the class."""
    if not isinstance(config, Mapping) or "family" not in config:
        _check_top_level(config, source)
    family = config["family"]
    if not isinstance(family, str) or family not in SPACES:
        raise SpaceError(
            f"search space {source}: unknown family {family!r}; families are {', '.join(SPACES.names())}"
        )
    return SPACES.get(family)(config, source)

