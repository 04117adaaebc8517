"""Every registered transform as a PyFlink ``ScalarFunction``, for the Table API and Flink SQL.

The wrapper is thin: ``open()`` builds the plain transform and resolves its key from the
keyring (never from SQL text), ``eval()`` calls ``apply``. A value that does not fit its
transform gives NULL, never the value itself, and is counted in the ``transform_refused``
metric: in SQL there is no dead-letter output to route it to.

One call registers them all, each under its SQL name (:func:`sql_name`: the transform's name
with dots as underscores, so ``mask.email`` is ``mask_email``)::

    from udfs.flink import register_all
    register_all(t_env, keyring_ref="file:/etc/anon/keyring.json")
    t_env.execute_sql("SELECT mask_email(email), mask_keep_last(ssn, '{n: 4}'),"
                      " fpe_ff1(card, '{format: card, domain: card_number}') FROM raw_events")

Every function takes the value and, optionally, its parameters as a YAML flow mapping, written
as in a policy (``'{n: 4}'``); they are parsed once per task and distinct text. Keyed transforms
are keyed per *domain*: a policy's default domain is the field's last name (``card``), a
function's is its variant (``ff1``), so pass ``{domain: ...}`` for the same output as the policy
(substitutions default to their kind, ``person_name``, in both). ``protect_json(value, rules)``
applies a policy's rules for a nested object or array, given as JSON text:
``protect_json(items, '{"items[*].card": {fpe: ff1}}')``.

Not registered, because SQL does them itself or cannot: ``keep`` and ``keep.*`` (select the
column), ``drop`` (leave it out), ``null`` (write NULL), and transforms that read the whole
record (``tokenize.vault``). ``udfs.sql_functions`` holds the same functions as module-level
objects, for ``CREATE TEMPORARY FUNCTION ... AS 'udfs.sql_functions.mask_email' LANGUAGE PYTHON``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pyflink.table import DataTypes
from pyflink.table.udf import ScalarFunction, udf

from udfs import registry
from udfs.errors import ParamError, TransformError
from udfs.keyring import Keyring, load_keyring
from udfs.record import PathError, apply_view, build_tree, parse_path

__all__ = [
    "NOT_IN_SQL",
    "JsonRulesFunction",
    "TransformFunction",
    "json_rules_function",
    "parse_params",
    "parse_spec",
    "register",
    "register_all",
    "register_fields",
    "scalar_function",
    "sql_name",
    "sql_transforms",
]

#: transforms that plain SQL already does (select, leave out, NULL): not registered as functions
NOT_IN_SQL = ("keep", "keep.integer", "keep.number", "keep.string", "drop", "null")
#: the SQL name of :class:`JsonRulesFunction`
PROTECT_JSON = "protect_json"


def sql_name(transform: str, prefix: str = "") -> str:
    """The SQL name of a transform: ``prefix`` + its name with dots as underscores (``mask_email``)."""
    return prefix + transform.replace(".", "_")


def sql_transforms(prefix: str = "") -> dict[str, str]:
    """SQL name -> transform name, for every registered transform that SQL can call."""
    out = {}
    for name in registry.names():
        cls = registry.get(name)
        if name in NOT_IN_SQL or cls.needs_record:
            continue
        out[sql_name(name, prefix)] = name
    return out


def parse_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    """A policy's field spec as (transform name, params): ``{mask: keep_last, n: 4}`` -> ("mask.keep_last", {"n": 4}).

    Read as the policy loader reads it (:func:`udfs.registry.split_spec`); the name must be registered.
    """
    name, params = registry.split_spec(spec)
    try:
        registry.get(name)
    except KeyError:
        raise ParamError("", f"unknown transform {name!r}", "a registered transform: flink-anonymizer transforms") from None
    return name, params


def parse_params(text: str) -> dict[str, Any]:
    """Parameters written in SQL: a YAML flow mapping such as ``'{n: 4}'`` (JSON works too)."""
    import yaml

    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ParamError("params", "is not a YAML mapping", "text such as '{n: 4}' or '{format: card}'") from None
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ParamError("params", f"must be a mapping, got {type(params).__name__}", "text such as '{n: 4}'")
    return params


class _Keyed(ScalarFunction):
    """Loads the keyring once per task, and only when a transform needs a key."""

    keyring_ref: str | None

    def _keyring(self) -> Keyring | None:
        if not hasattr(self, "_loaded_keyring"):
            self._loaded_keyring = load_keyring(self.keyring_ref) if self.keyring_ref else None
        return self._loaded_keyring

    def _open_transform(self, cls: type[registry.Transform], params: dict[str, Any], domain: str) -> Any:
        transform = cls(params, domain=domain)
        transform.open(self._keyring() if cls.key_purpose else None)
        return transform


class TransformFunction(_Keyed):
    """A registered transform, by name and parameters, as a Flink scalar function.

    Called as ``f(value)`` it uses the parameters it was made with; as ``f(value, '{n: 4}')``
    those, updated by the ones in the text.
    """

    #: distinct parameter texts kept opened per task
    MAX_PARAM_TEXTS = 256

    def __init__(self, name: str, params: dict[str, Any] | None = None, *, domain: str | None = None,
                 keyring_ref: str | None = None) -> None:
        self.transform_name = name
        self.params = dict(params or {})
        self.domain = domain or name.rsplit(".", 1)[-1]
        self.keyring_ref = keyring_ref
        cls = registry.get(name)  # unknown names fail here, when the query is built
        self._deterministic = cls.deterministic
        #: a required parameter missing (generalize.range's width): only the f(value, params) form works
        self.params_problem: str | None = None
        try:
            cls(self.params, domain=self.domain)  # and bad parameters too, with their ParamError
        except ParamError as exc:
            if params:
                raise
            self.params_problem = str(exc)

    def open(self, function_context: Any) -> None:
        self.apply = None
        if self.params_problem is None:
            self.transform = self._open_transform(registry.get(self.transform_name), self.params, self.domain)
            self.apply = self.transform.cached_apply()
        self._by_params: dict[str, Any] = {}
        self.refused = function_context.get_metric_group().counter("transform_refused")

    def _apply_for(self, text: str) -> Any:
        apply = self._by_params.get(text)
        if apply is None:
            try:
                params = {**self.params, **parse_params(text)}
                transform = self._open_transform(registry.get(self.transform_name), params, self.domain)
            except ParamError as exc:
                # a mistake in the SQL text: fail the job, naming the function (never a value)
                raise ParamError(exc.param, f"{self.transform_name}: {exc.problem}", exc.allowed) from None
            if len(self._by_params) >= self.MAX_PARAM_TEXTS:  # params from a column, not a literal
                self._by_params.clear()
            apply = self._by_params[text] = transform.cached_apply()
        return apply

    def eval(self, value: Any, params: str | None = None) -> Any:
        try:
            if params is None:
                if self.apply is None:
                    raise ParamError("params", f"{self.transform_name} needs parameters: {self.params_problem}",
                                     "a second argument such as '{width: 10}'")
                return self.apply(value)
            return self._apply_for(params)(value)
        except TransformError:
            self.refused.inc()
            return None
        except ParamError:
            raise  # a mistake in the SQL text, named without a value
        except Exception as exc:  # a bug, not a refusal: its own message may quote the value
            raise RuntimeError(f"{self.transform_name} failed: {type(exc).__name__} (message withheld)") from None

    def is_deterministic(self) -> bool:
        return self._deterministic


class JsonRulesFunction(_Keyed):
    """``protect_json(json_text, rules)``: a policy's rules for one nested field, applied to its JSON text.

    ``rules`` maps paths that start with the field's name to field specs, as in a policy
    (``{"items[*].card": {fpe: ff1, format: card}, "items[*].sku": keep}``), deny by default
    below the field. Returns the protected JSON text, or NULL for NULL, for text that is not
    JSON and for a value that does not fit its rules (counted in ``transform_refused``).
    """

    #: distinct rules texts kept compiled per task (rules from a column could be all different)
    MAX_RULES_TEXTS = 64

    def __init__(self, keyring_ref: str | None = None) -> None:
        self.keyring_ref = keyring_ref

    def open(self, function_context: Any) -> None:
        self._trees: dict[str, tuple[str, Any]] = {}
        self.refused = function_context.get_metric_group().counter("transform_refused")

    def _tree(self, text: str) -> tuple[str, Any]:
        compiled = self._trees.get(text)
        if compiled is None:
            compiled = self.compile(text)
            if len(self._trees) >= self.MAX_RULES_TEXTS:
                self._trees.clear()
            self._trees[text] = compiled
        return compiled

    def compile(self, text: str) -> tuple[str, Any]:
        """(the field's name, the rules' tree), once per distinct rules text."""
        rules = parse_params(text)
        if not rules:
            raise ParamError("rules", "protect_json needs at least one rule", "{\"items[*].sku\": keep}")
        names = set()
        compiled = []
        for path, spec in rules.items():
            try:
                names.add(parse_path(str(path))[0][0])
            except PathError as exc:
                raise ParamError("rules", f"protect_json: {exc}", "paths such as items[*].card") from None
            name, params = parse_spec(spec)
            leaf = str(path).split(".")[-1].replace("[*]", "")  # the policy's default domain
            transform = self._open_transform(registry.get(name), params, leaf)
            if transform.needs_record:  # the record here is the field alone: a tweak or subject field is not in it
                raise ParamError("rules", f"protect_json: {path}: {name} with these parameters reads other fields "
                                          "of the record", "a transform of the value alone, or the policy job")
            compiled.append((str(path), transform))
        if len(names) != 1:
            raise ParamError("rules", "protect_json rules must all start with the same field",
                             "paths under one field, such as items[*].sku and items[*].card")
        return names.pop(), build_tree(compiled)

    def eval(self, value: Any, rules: str) -> Any:
        if value is None:
            return None
        field, tree = self._tree(rules)
        try:
            document = json.loads(value)
            protected = apply_view(tree, {field: document}, [])
        except (ValueError, TransformError):  # JSONDecodeError is a ValueError
            self.refused.inc()
            return None
        except Exception as exc:  # a bug, not a refusal: its own message may quote the value
            raise RuntimeError(f"protect_json failed: {type(exc).__name__} (message withheld)") from None
        if field not in protected:
            return None
        return json.dumps(protected[field], ensure_ascii=False, separators=(",", ":"))


def scalar_function(name: str, params: dict[str, Any] | None = None, *, domain: str | None = None,
                    keyring_ref: str | None = None, result_type: Any = None) -> Any:
    """A ``udf`` wrapping the transform ``name`` (STRING result unless ``result_type`` says otherwise)."""
    function = TransformFunction(name, params, domain=domain, keyring_ref=keyring_ref)
    return udf(function, result_type=result_type if result_type is not None else DataTypes.STRING())


def json_rules_function(keyring_ref: str | None = None) -> Any:
    """``protect_json`` as a ``udf`` (STRING result)."""
    return udf(JsonRulesFunction(keyring_ref), result_type=DataTypes.STRING())


def register(t_env: Any, name: str, spec: Any, params: dict[str, Any] | None = None, *,
             domain: str | None = None, keyring_ref: str | None = None, result_type: Any = None) -> None:
    """Register one transform under the SQL ``name``, with its parameters.

    ``spec`` is a transform name (``"mask.keep_last"``, with ``params``) or a policy's field spec
    (``{"mask": "keep_last", "n": 4}``), so a policy's field can be registered as it is written::

        register(t_env, "masked_card", policy_fields["card"], domain="card", keyring_ref=ref)
    """
    transform, spec_params = parse_spec(spec)
    function = scalar_function(transform, {**spec_params, **(params or {})}, domain=domain,
                               keyring_ref=keyring_ref, result_type=result_type)
    t_env.create_temporary_system_function(name, function)


def register_fields(t_env: Any, fields: Mapping[str, Any], *, prefix: str = "", keyring_ref: str | None = None) -> list[str]:
    """Register a policy view's ``fields`` mapping, one function per field, as the policy applies them.

    ``address.street`` becomes ``<prefix>address_street``, keyed under the policy's default domain
    (the field's last name) unless its spec names one. Fields SQL selects or leaves out itself
    (``keep``, ``drop``, ``null``) and paths through arrays (``items[*].card``: use ``protect_json``)
    are skipped. Returns the names registered::

        register_fields(t_env, policy_document["views"]["masked"]["fields"], prefix="masked_", keyring_ref=ref)
        t_env.sql_query("SELECT masked_card(card), masked_address_street(address.street) FROM raw_events")
    """
    names = []
    for path, spec in fields.items():
        transform, params = parse_spec(spec)
        if transform in NOT_IN_SQL or "[*]" in str(path) or registry.get(transform).needs_record:
            continue
        name = prefix + str(path).replace(".", "_")
        register(t_env, name, transform, params, domain=str(path).split(".")[-1], keyring_ref=keyring_ref)
        names.append(name)
    return names


def register_all(t_env: Any, keyring_ref: str | None = None, *, prefix: str = "") -> list[str]:
    """Register every transform SQL can call in ``t_env``, with default parameters, and ``protect_json``.

    Each is a temporary system function named by :func:`sql_name` (``mask_email``), so it
    resolves from any catalog and database. Keys come from ``keyring_ref`` (``env:NAME`` or
    ``file:PATH``) when a task opens the function. Returns the names, sorted.
    """
    names = []
    for function_name, transform in sql_transforms(prefix).items():
        t_env.create_temporary_system_function(function_name, scalar_function(transform, keyring_ref=keyring_ref))
        names.append(function_name)
    t_env.create_temporary_system_function(prefix + PROTECT_JSON, json_rules_function(keyring_ref))
    names.append(prefix + PROTECT_JSON)
    return sorted(names)
