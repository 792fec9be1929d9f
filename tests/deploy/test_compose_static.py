"""Static checks of the production stack: docker-compose.yaml, .env.example, Dockerfile,
.dockerignore and docs/production.md agree with each other and with the code.

No Docker engine is needed. The compose file is parsed with PyYAML (anchors and ``<<`` merges
resolved) and interpolated the way ``docker compose config`` does (``$$``, ``${VAR}``,
``${VAR:-default}``, ...). What the code reads (``PROMPTOPS_*`` names, connection ids) is
derived from the code itself, never from a copy kept here. The init containers' shell
scripts are run for real (their secret guards) or at least parsed by bash / sh.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.helpers import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PRODUCTION_DOC = ROOT / "docs" / "production.md"
CODE_DIRS = (ROOT / "include" / "promptops", ROOT / "dags", ROOT / "plugins")
CONFIG_DIR = ROOT / "include" / "config"

#: The services the production shape needs (issue 6 §1).
REQUIRED_SERVICES = {
    "postgres", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
    "airflow-triggerer", "airflow-worker", "airflow-worker-gpu", "airflow-init", "airflow-cli",
    "flower", "platform-simulator", "slack-sink", "minio", "minio-init",
}
#: Words of a variable name that say it holds a secret (``AWS_SECRET_ACCESS_KEY``,
#: ``PROMPT_API_KEY``; not ``..._PASSWORDS_FILE``, a path, nor ``DAILY_TOKENS_BUDGET``).
SECRET_WORDS = {"PASSWORD", "SECRET", "FERNET", "TOKEN", "WEBHOOK", "KEY"}
#: Environment that third-party images need from .env (their documented variables).
IMAGE_NEEDS = {"postgres": {"POSTGRES_PASSWORD"},
               "minio/minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}}
#: Variables a container's shell has without anyone setting them.
RUNTIME_VARS = {"HOSTNAME", "HOME", "PATH", "PWD", "USER"}


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret: a secret word, a
    connection (``AIRFLOW_CONN_*`` may carry a password) or an Airflow URL with a password
    in it (the metadata database, the Celery result backend)."""
    upper = name.upper()
    return (bool(SECRET_WORDS & set(re.split(r"_+", upper)))
            or upper.startswith("AIRFLOW_CONN_")
            or upper.endswith(("SQL_ALCHEMY_CONN", "RESULT_BACKEND")))


# -- reading the files ----------------------------------------------------------------------

def parse_env_file(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(values, section of each name) of a dotenv file as compose reads it: ``KEY=VALUE``,
    optional single or double quotes, ``#`` comments. The section is the last
    ``# --- <word>`` header above the line (``settings`` / ``secrets``)."""
    values: dict[str, str] = {}
    sections: dict[str, str] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if header := re.match(r"#\s*---\s*(\w+)", line):
            section = header.group(1).lower()
            continue
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ")
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {raw!r}"
        name, value = name.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        assert name not in values, f"{path.name}: {name} set twice"
        values[name], sections[name] = value, section
    return values, sections


@cache
def env_example() -> tuple[dict[str, str], dict[str, str]]:
    return parse_env_file(ENV_EXAMPLE)


def secret_names() -> set[str]:
    _, sections = env_example()
    return {n for n, s in sections.items() if s == "secrets"}


def setting_names() -> set[str]:
    _, sections = env_example()
    return {n for n, s in sections.items() if s == "settings"}


@cache
def compose_raw_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


def compose_model() -> dict[str, Any]:
    """The compose file as YAML gives it (anchors and merges resolved, nothing interpolated)."""
    return yaml.safe_load(compose_raw_text())


_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate_string(text: str, env: dict[str, str], used: set[str] | None = None) -> str:
    """Compose's interpolation of one string; a ``$`` it cannot read is an error, as in
    compose."""
    out: list[str] = []
    pos = 0
    while (i := text.find("$", pos)) != -1:
        out.append(text[pos:i])
        m = _INTERPOLATION.match(text, i)
        if m is None:
            raise ValueError(f"invalid interpolation at {text[i:i + 20]!r}: use $$ for a "
                             "literal $")
        if m.group("escaped"):
            out.append("$")
        else:
            name = m.group("braced") or m.group("named")
            if used is not None:
                used.add(name)
            op, arg = m.group("op"), m.group("arg") or ""
            value = env.get(name)
            if op in (":-", "-"):
                empty = value is None or (op == ":-" and value == "")
                out.append(arg if empty else value)
            elif op in (":?", "?"):
                if value is None or (op == ":?" and value == ""):
                    raise ValueError(f"required variable {name} is missing: {arg}")
                out.append(value)
            elif op in (":+", "+"):
                present = value is not None and (op == "+" or value != "")
                out.append(arg if present else "")
            else:
                out.append(value or "")
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def interpolate(obj: Any, env: dict[str, str], used: set[str] | None = None) -> Any:
    if isinstance(obj, str):
        return interpolate_string(obj, env, used)
    if isinstance(obj, dict):
        return {k: interpolate(v, env, used) for k, v in obj.items()}
    if isinstance(obj, list):
        return [interpolate(v, env, used) for v in obj]
    return obj


def rendered(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose model interpolated with ``.env.example`` (or ``env``), like ``docker
    compose config`` (which does not inline env_file contents)."""
    return interpolate(compose_model(), env if env is not None else env_example()[0])


def services(model: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    return (model or rendered())["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def container_env(name: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """What the container of service ``name`` sees: its env_file (``.env``, here the
    example's values or ``env``) overridden by its ``environment``."""
    values = dict(env if env is not None else env_example()[0])
    service = services(rendered(values))[name]
    base = values if service.get("env_file") else {}
    return {**base, **environment(service)}


def command_text(service: dict[str, Any], key: str = "command") -> str:
    value = service.get(key) or ""
    return " ".join(value) if isinstance(value, list) else str(value)


def all_env_names() -> dict[str, str]:
    """Every env name the stack sets, with where: compose ``environment`` blocks and the
    ``.env.example`` assignments (they reach the containers through env_file)."""
    names: dict[str, str] = {}
    for svc_name, svc in services(compose_model()).items():
        for name in environment(svc):
            names.setdefault(name, f"docker-compose.yaml ({svc_name})")
    for name in env_example()[0]:
        names.setdefault(name, ".env.example")
    return names


# -- what the code reads --------------------------------------------------------------------

def code_files() -> Iterator[Path]:
    for folder in CODE_DIRS:
        yield from sorted(folder.rglob("*.py"))


def string_constants(node: ast.AST) -> Iterator[str]:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            yield sub.value


@cache
def settings_classes() -> tuple[type, ...]:
    """Every pydantic-settings class of promptops (imported from the modules that use it)."""
    from pydantic_settings import BaseSettings

    package_root = ROOT / "include"
    for path in (ROOT / "include" / "promptops").rglob("*.py"):
        if "BaseSettings" in path.read_text(encoding="utf-8"):
            module = ".".join(path.relative_to(package_root).with_suffix("").parts)
            importlib.import_module(module.removesuffix(".__init__"))
    found: list[type] = []
    stack = list(BaseSettings.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.startswith("promptops"):
            found.append(cls)
    return tuple(found)


@cache
def promptops_names_read() -> tuple[frozenset[str], frozenset[str]]:
    """(exact names, open prefixes) of the ``PROMPTOPS_*`` variables the code reads: every
    field of every settings class under its ``env_prefix``, and every ``PROMPTOPS_...``
    string literal under include/, dags/ and plugins/ (one ending in ``__`` is an open
    prefix, e.g. ``PROMPTOPS_THRESHOLD__<rule>__<field>``)."""
    exact: set[str] = set()
    prefixes: set[str] = set()
    for cls in settings_classes():
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, field in cls.model_fields.items():
            exact.add(f"{prefix}{field.alias or field_name}".upper())
    for path in code_files():
        for value in string_constants(ast.parse(path.read_text(encoding="utf-8"))):
            if re.fullmatch(r"PROMPTOPS_[A-Z0-9_]+", value):
                if value.endswith("__"):
                    prefixes.add(value)
                elif not value.endswith("_"):
                    exact.add(value)
    return frozenset(exact), frozenset(prefixes)


def _conn_ids_in(node: ast.AST) -> set[str]:
    return {v for v in string_constants(node) if re.fullmatch(r"[a-z][a-z0-9_]*", v)}


@cache
def conn_ids_used() -> frozenset[str]:
    """Airflow connection ids the project uses: string defaults of fields, arguments and
    keywords whose name mentions ``conn`` (``conn_id="relevance_judge"``,
    ``slack_connections = ("slack_alerts",)``), connection lists in include/config/*.yaml,
    the user part of the stack's ``s3://conn@bucket`` URIs, and Airflow options of the stack
    that name a connection (``AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID``)."""
    ids: set[str] = set()
    for path in code_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if "conn" in node.target.id.lower() and node.value is not None:
                    ids |= _conn_ids_in(node.value)
            elif isinstance(node, ast.Assign):
                if any(isinstance(t, ast.Name) and "conn" in t.id.lower() for t in node.targets):
                    ids |= _conn_ids_in(node.value)
            elif isinstance(node, ast.arguments):
                positional = node.posonlyargs + node.args
                pairs = list(zip(positional[len(positional) - len(node.defaults):],
                                 node.defaults, strict=True))
                pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True)
                          if d is not None]
                for arg, default in pairs:
                    if "conn" in arg.arg.lower():
                        ids |= _conn_ids_in(default)
            elif isinstance(node, ast.keyword) and node.arg and "conn" in node.arg.lower():
                ids |= _conn_ids_in(node.value)

    def walk_yaml(obj: Any) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                if "conn" in str(key).lower():
                    items = value if isinstance(value, list) else [value]
                    ids.update(v for v in items if isinstance(v, str))
                walk_yaml(value)
        elif isinstance(obj, list):
            for value in obj:
                walk_yaml(value)

    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        walk_yaml(yaml.safe_load(path.read_text(encoding="utf-8")))

    for svc in services().values():
        for name, value in environment(svc).items():
            if name.startswith("PROMPTOPS_") and "://" in value:
                if user := urlsplit(value).username:
                    ids.add(user)
            if name.startswith("AIRFLOW__") and name.endswith("CONN_ID") and value:
                ids.add(value)
    return frozenset(ids)


# -- Dockerfile ----------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY."""
    copies = []
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            copies.append((parts[:-1], parts[-1]))
    return copies


def image_path_to_repo(container_path: str) -> Path | None:
    """The repository file a path inside the image comes from (through a COPY), or None."""
    target = PurePosixPath(container_path)
    for sources, dest in dockerfile_copies():
        for source in sources:
            if dest.endswith("/"):
                copied_to = PurePosixPath(dest) / PurePosixPath(source).name
            else:
                copied_to = PurePosixPath(dest)
            if target == copied_to or copied_to in target.parents:
                return ROOT / source / target.relative_to(copied_to)
    return None


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per line of .dockerignore, in order (the last match wins)."""
    patterns = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((not negate, re.compile(regex)))
    return patterns


def excluded_from_build(relative: str) -> bool:
    """Whether docker leaves this repository path out of the build context (a pattern that
    matches a folder also matches everything in it)."""
    path = PurePosixPath(relative)
    candidates = [str(p) for p in reversed(path.parents) if str(p) != "."] + [str(path)]
    excluded = False
    for exclude, regex in dockerignore_patterns():
        if any(regex.fullmatch(c) for c in candidates):
            excluded = exclude
    return excluded


# -- tests: services and files --------------------------------------------------------------

def test_required_services_exist():
    missing = REQUIRED_SERVICES - set(services())
    assert not missing, f"docker-compose.yaml lacks services: {sorted(missing)}"


def test_every_service_is_documented_and_every_documented_service_exists():
    text = PRODUCTION_DOC.read_text(encoding="utf-8")
    table = text.split("## Services", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\|\s*`([a-z0-9-]+)`\s*\|", table, flags=re.M))
    assert documented, "docs/production.md has no services table"
    assert documented - set(services()) == set(), "documented but not in the compose file"
    assert set(services()) - documented == set(), "in the compose file but not documented"


def test_long_running_services_restart_and_have_healthchecks():
    svcs = services()
    one_shot = {dep for svc in svcs.values() for dep, cond in (svc.get("depends_on") or {}).items()
                if cond.get("condition") == "service_completed_successfully"}
    assert {"airflow-init", "minio-init"} <= one_shot
    for name, svc in svcs.items():
        if name in one_shot or "debug" in (svc.get("profiles") or []):
            assert "restart" not in svc, f"{name} runs once; it must not restart"
            continue
        assert svc.get("restart") == "always", f"{name}: restart: always"
        assert svc.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"


def test_depends_on_names_services_in_a_state_they_can_reach():
    svcs = services()
    for name, svc in svcs.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in svcs, f"{name} depends on unknown service {dep}"
            assert dep != name
            if cond["condition"] == "service_healthy":
                assert svcs[dep].get("healthcheck"), f"{name} waits for {dep}'s health check"
            if "debug" not in (svc.get("profiles") or []):
                assert not svcs[dep].get("profiles"), \
                    f"{name} depends on {dep}, which only starts with a profile"


def test_build_context_env_files_and_bind_mounts_exist():
    model = rendered()
    for name, svc in model["services"].items():
        if build := svc.get("build"):
            context = ROOT / build["context"]
            assert context.is_dir(), f"{name}: build context {context}"
            assert (context / build.get("dockerfile", "Dockerfile")).is_file()
        for env_file in svc.get("env_file") or []:
            assert env_file == ".env", f"{name}: env_file {env_file}"
        for volume in svc.get("volumes") or []:
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                host = (ROOT / source).resolve()
                assert host.exists(), f"{name}: bind mount {source} does not exist"
                assert ROOT in host.parents, f"{name}: {source} is outside the repository"
                # The mount stands in for what the image copied to the same place.
                assert image_path_to_repo(target) == host, \
                    f"{name}: {source} is mounted at {target}, where the image has other files"
            else:
                assert source in model["volumes"], f"{name}: volume {source} is not declared"


def test_env_file_is_git_ignored_and_has_an_example():
    assert ENV_EXAMPLE.is_file()
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert ignored.returncode == 0, ".env must be git-ignored (and not tracked)"
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", ".env"], cwd=ROOT,
                             capture_output=True)
    assert tracked.returncode != 0, ".env is tracked by git"


def test_files_the_containers_read_exist_in_the_image_and_the_repository():
    """Relative file arguments (the simulator's scenario) resolve, from the service's
    working_dir, to a file the image copied from this repository."""
    checked = 0
    for name, svc in services().items():
        workdir = svc.get("working_dir")
        args = svc.get("command") if isinstance(svc.get("command"), list) else []
        for arg in args:
            if re.search(r"\.(ya?ml|json)$", arg):
                assert workdir, f"{name}: {arg} is relative but the service has no working_dir"
                repo_file = image_path_to_repo(str(PurePosixPath(workdir) / arg))
                assert repo_file is not None and repo_file.is_file(), f"{name}: {arg}"
                checked += 1
    assert checked, "no file argument found (the simulator's --scenario)"
    scenario = services()["platform-simulator"]["command"]
    assert scenario[scenario.index("--scenario") + 1] == "include/config/scenarios/demo.yaml"


def test_state_dir_is_a_shared_named_volume():
    model = rendered()
    for name, svc in model["services"].items():
        state_dir = environment(svc).get("PROMPTOPS_STATE_DIR")
        if state_dir is None:
            continue
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes") or []}
        assert mounts.get(state_dir) in model["volumes"], \
            f"{name}: PROMPTOPS_STATE_DIR {state_dir} is not on a named volume"


# -- tests: names the stack sets are names the code reads -----------------------------------

def test_promptops_env_names_are_read_by_the_code():
    exact, prefixes = promptops_names_read()
    # The derivation itself works: the settings module's fields are found.
    assert {"PROMPTOPS_LAKE_URI", "PROMPTOPS_STATE_DIR", "PROMPTOPS_GPU_QUEUE"} <= exact
    set_names = {n: where for n, where in all_env_names().items() if n.startswith("PROMPTOPS_")}
    assert set_names, "the stack sets no PROMPTOPS_* variable"
    unknown = {n: where for n, where in set_names.items()
               if n.upper() not in exact and not any(n.upper().startswith(p) for p in prefixes)}
    assert not unknown, f"PROMPTOPS_* names no code reads: {unknown}"


def test_promptops_values_pass_the_code_s_own_validation(monkeypatch):
    """Every settings class and the thresholds loader accept what the workers see."""
    from promptops.detection.thresholds import load_thresholds

    env = container_env("airflow-worker-gpu")
    for name in list(os.environ):
        if name.startswith("PROMPTOPS_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("PROMPTOPS_"):
            monkeypatch.setenv(name, value)
    for cls in settings_classes():
        cls()  # raises a ValidationError naming the variable
    load_thresholds(env=env)
    from promptops.settings import Settings

    settings = Settings()
    assert settings.lake_uri.startswith("s3://")
    assert str(settings.state_dir) == env["PROMPTOPS_STATE_DIR"]


def test_threshold_overrides_name_real_rules():
    from promptops.detection.thresholds import ThresholdsConfigError, load_thresholds

    env = container_env("airflow-worker")
    overrides = {k: v for k, v in env.items() if k.startswith("PROMPTOPS_THRESHOLD__")}
    assert overrides
    config = load_thresholds(env=overrides)
    assert config.model_dump()["rules"]["daily_tokens"]["budget"] == int(
        env["PROMPTOPS_THRESHOLD__DAILY_TOKENS__BUDGET"])
    # The loader is strict, so the check above can fail.
    with pytest.raises(ThresholdsConfigError):
        load_thresholds(env={"PROMPTOPS_THRESHOLD__NO_SUCH_RULE__BUDGET": "1"})


def test_connections_are_ones_the_code_uses():
    used = conn_ids_used()
    assert {"prompt_platform", "slack_alerts", "relevance_judge", "aws_default"} <= used
    conns = {n: where for n, where in all_env_names().items() if n.startswith("AIRFLOW_CONN_")}
    assert {"AIRFLOW_CONN_PROMPT_PLATFORM", "AIRFLOW_CONN_SLACK_ALERTS",
            "AIRFLOW_CONN_RELEVANCE_JUDGE", "AIRFLOW_CONN_AWS_DEFAULT"} <= set(conns)
    unknown = {n: w for n, w in conns.items()
               if n.removeprefix("AIRFLOW_CONN_").lower() not in used}
    assert not unknown, f"connections no code uses: {unknown}"


def test_airflow_config_env_names_are_real_options():
    from airflow.configuration import conf

    described = conf.configuration_description  # core and provider options
    names = [n for n in all_env_names() if n.startswith("AIRFLOW__")]
    assert len(names) > 10
    for name in names:
        parts = name.split("__")
        assert len(parts) == 3, f"{name}: AIRFLOW__SECTION__KEY"
        section, key = parts[1].lower(), parts[2].lower()
        options = described.get(section, {}).get("options", {})
        # `<option>_CMD` / `<option>_SECRET` read an option from a command or a backend.
        base = re.sub(r"_(cmd|secret)$", "", key)
        known = key in options or (base != key and base in options)
        assert known or conf.has_option(section, key), f"{name}: no option [{section}] {key}"


# -- tests: secrets -------------------------------------------------------------------------

def test_rendered_compose_shows_no_secret():
    """``docker compose config`` with a .env whose secrets are canaries shows none of them,
    while every setting it interpolates does show (so the rendering is real)."""
    values, _ = env_example()
    env = {}
    for name in values:
        if name in secret_names():
            env[name] = f"canary-{secrets.token_hex(8)}"
        else:
            env[name] = f"setting-{name.lower()}-{secrets.token_hex(4)}"
    used: set[str] = set()
    text = json.dumps(interpolate(compose_model(), env, used))
    leaked = [n for n in secret_names() if env[n] in text]
    assert not leaked, f"the compose file interpolates secrets: {leaked}"
    assert not used & secret_names()
    assert used, "the compose file interpolates nothing"
    for name in used:
        assert name in env and env[name] in text, f"{name} was not substituted"


def test_every_interpolated_variable_is_a_documented_setting():
    used: set[str] = set()
    interpolate(compose_model(), {}, used)
    undocumented = used - setting_names()
    assert not undocumented, f"set these in the settings part of .env.example: {undocumented}"


def test_secret_names_are_not_set_in_the_compose_file():
    """Secrets reach the containers through env_file only: no secret-looking name in any
    ``environment``, except connections that carry no credentials."""
    for name, svc in services().items():
        for key, value in environment(svc).items():
            if key.startswith("AIRFLOW_CONN_"):
                conn = json.loads(value)
                assert not {"login", "password"} & set(conn), f"{name}: {key} holds credentials"
                assert not urlsplit(conn.get("host", "")).password
                assert not any(is_secret_name(k) for k in conn.get("extra", {}))
            else:
                assert not is_secret_name(key), f"{name}: {key} must come from .env"


def test_env_example_sections_split_secrets_from_settings():
    values, sections = env_example()
    assert set(sections.values()) == {"settings", "secrets"}
    for name in setting_names():
        assert not is_secret_name(name), f"{name} looks secret: move it to the secrets"
    for name in secret_names():
        if name != "MINIO_ROOT_USER":  # a login name, kept beside its password
            assert is_secret_name(name), f"{name} does not look secret: rename or move it"
        assert values[name], f"{name} needs a placeholder"


def test_env_example_has_what_the_env_file_services_need():
    values, _ = env_example()
    for name, svc in services().items():
        if not svc.get("env_file"):
            continue
        env = environment(svc)
        image = str(svc.get("image", "")).split(":")[0]
        for var in IMAGE_NEEDS.get(image, set()):
            assert var in values, f"{name} ({image}) needs {var} in .env.example"
        script = command_text(svc) + " " + command_text(svc, "entrypoint")
        script += " " + command_text(svc.get("healthcheck") or {}, "test")
        local = set(re.findall(r"\bfor\s+([A-Za-z_]\w*)\s+in\b", script))
        local |= set(re.findall(r"(?:^|\s)([A-Za-z_]\w*)=", script))
        referenced = set(re.findall(r"\$\{!?([A-Za-z_]\w*)", script))
        referenced |= set(re.findall(r"\$([A-Za-z_]\w*)", script))
        for var in referenced - local - RUNTIME_VARS - set(env):
            assert var in values, f"{name} reads ${var}: add it to .env.example"
        for var in env.get("REQUIRED_SECRETS", "").split():
            assert var in secret_names(), f"REQUIRED_SECRETS names {var}, not in .env.example"
    airflow = container_env("airflow-scheduler")
    for var in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND",
                "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY",
                "AIRFLOW__API_AUTH__JWT_SECRET", "PROMPT_API_KEY",
                "AIRFLOW_CONN_SLACK_ALERTS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert airflow.get(var), f"Airflow containers get no {var}"


def test_env_example_urls_point_at_the_stack():
    values, _ = env_example()
    svcs = services()
    postgres_env = environment(svcs["postgres"])
    for var in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        url = urlsplit(values[var])
        assert url.hostname == "postgres" and url.hostname in svcs
        assert url.username == postgres_env["POSTGRES_USER"]
        assert url.password == values["POSTGRES_PASSWORD"], f"{var}: not POSTGRES_PASSWORD"
        assert url.path == f"/{postgres_env['POSTGRES_DB']}"
    slack = json.loads(values["AIRFLOW_CONN_SLACK_ALERTS"])
    assert slack["conn_type"] == "slackwebhook"
    sink = urlsplit(slack["password"])
    assert sink.hostname == "slack-sink"
    assert str(sink.port) == _flag(svcs["slack-sink"]["command"], "--port")
    judge = json.loads(values["AIRFLOW_CONN_RELEVANCE_JUDGE"])
    assert urlsplit(judge["host"]).hostname in svcs


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_urls_inside_the_stack_point_at_its_services():
    svcs = services()
    env = environment(svcs["airflow-scheduler"])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    execution = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert execution.hostname == "airflow-apiserver" and execution.path == "/execution/"
    published = {p.rsplit(":", 1)[-1] for p in svcs["airflow-apiserver"]["ports"]}
    assert str(execution.port) in published
    platform = urlsplit(json.loads(env["AIRFLOW_CONN_PROMPT_PLATFORM"])["host"])
    assert platform.hostname == "platform-simulator"
    assert str(platform.port) == _flag(svcs["platform-simulator"]["command"], "--port")
    s3 = urlsplit(json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])["extra"]["endpoint_url"])
    assert s3.hostname == "minio" and s3.port == 9000  # `minio server` listens on 9000
    lake = urlsplit(env["PROMPTOPS_LAKE_URI"])
    assert lake.scheme == "s3" and f"AIRFLOW_CONN_{lake.username.upper()}" in env
    assert f"lake/{lake.hostname}" in command_text(svcs["minio-init"]), \
        "minio-init does not create the lake's bucket"
    logs = urlsplit(env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"])
    assert logs.hostname == lake.hostname
    assert f"AIRFLOW_CONN_{env['AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID'].upper()}" in env


def test_gpu_worker_serves_the_gpu_queue_and_the_plain_worker_does_not():
    svcs = services()
    gpu_queue = environment(svcs["airflow-worker-gpu"])["PROMPTOPS_GPU_QUEUE"]
    assert gpu_queue
    gpu_args = shlex.split(command_text(svcs["airflow-worker-gpu"]))
    assert gpu_args[:2] == ["celery", "worker"]
    assert set(_flag(gpu_args, "--queues").split(",")) == {"default", gpu_queue}
    plain = shlex.split(command_text(svcs["airflow-worker"]))
    assert plain[:2] == ["celery", "worker"] and "--queues" not in plain and "-q" not in plain
    # The NVIDIA reservation is there, commented, in the GPU worker's block.
    block = compose_raw_text().split("  airflow-worker-gpu:", 1)[1].split("\n  airflow-init:")[0]
    for line in ("# deploy:", "#         - driver: nvidia", "#           capabilities: [gpu]"):
        assert line in block


# -- tests: the init containers' scripts ----------------------------------------------------

def _init_script(env: dict[str, str]) -> str:
    return services(rendered(env))["airflow-init"]["command"][1]


def _filled_env() -> dict[str, str]:
    values, _ = env_example()
    filled = {n: (f"real-{secrets.token_hex(6)}" if n in secret_names() else v)
              for n, v in values.items()}
    filled["AIRFLOW_CONN_RELEVANCE_JUDGE"] = values["AIRFLOW_CONN_RELEVANCE_JUDGE"]
    return filled


def _run(shell: str, script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([shell, "-c", script], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=60)


def test_init_scripts_are_valid_shell():
    env = env_example()[0]
    assert services(rendered(env))["airflow-init"]["entrypoint"] == "/bin/bash"
    check = subprocess.run(["bash", "-n", "-c", _init_script(env)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr
    minio = services(rendered(env))["minio-init"]
    assert minio["entrypoint"] == ["/bin/sh", "-c"]
    check = subprocess.run(["sh", "-n", "-c", minio["command"][0]], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr


def test_airflow_init_refuses_placeholder_secrets_without_printing_them():
    values, _ = env_example()
    script = _init_script(values)
    guard = script.split("if (( missing )); then exit 1; fi", 1)[0]
    guard += "if (( missing )); then exit 1; fi\necho GUARD-PASSED\n"
    required = environment(services()["airflow-init"])["REQUIRED_SECRETS"].split()

    refused = _run("bash", guard, container_env("airflow-init", values))
    assert refused.returncode == 1
    # Exactly the placeholders are refused (the demo's Slack sink URL is a usable value).
    placeholders = {n for n in required if "change-me" in values[n]}
    assert placeholders
    named = set(re.findall(r"ERROR: set (\S+) in \.env", refused.stderr))
    assert named == placeholders
    assert "change-me" not in refused.stdout + refused.stderr

    filled = _filled_env()
    passed = _run("bash", guard, container_env("airflow-init", filled))
    assert passed.returncode == 0 and "GUARD-PASSED" in passed.stdout, passed.stderr

    # The judge's placeholder matters only once the judge is on.
    judged = _run("bash", guard, {**container_env("airflow-init", filled),
                                  "PROMPTOPS_JUDGE_ENABLED": "True"})
    assert judged.returncode == 1 and "AIRFLOW_CONN_RELEVANCE_JUDGE" in judged.stderr


def test_airflow_init_writes_the_admin_password_the_auth_manager_reads(tmp_path, monkeypatch):
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    filled = _filled_env()
    env = container_env("airflow-init", filled)
    script = _init_script(filled)
    writer = re.search(r"<<'EOF'\n(.*?)\nEOF\n", script, flags=re.S).group(1)
    passwords = tmp_path / "passwords.json"
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(passwords)
    done = subprocess.run([sys.executable, "-c", writer], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], **env}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert filled["_AIRFLOW_WWW_USER_PASSWORD"] not in done.stdout + done.stderr

    api_env = container_env("airflow-apiserver", filled)
    # The API server reads the file the init container writes (same path, shared volume).
    key = "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
    assert api_env[key] == container_env("airflow-init", filled)[key]
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
                       api_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"])
    users = SimpleAuthManager.get_users()
    assert [(u.username, u.role) for u in users] == [("admin", "admin")]
    assert SimpleAuthManager.get_passwords() == {"admin": filled["_AIRFLOW_WWW_USER_PASSWORD"]}


def test_minio_init_refuses_placeholder_secrets():
    values, _ = env_example()
    script = services(rendered(values))["minio-init"]["command"][0]
    guard = script.split("esac", 1)[0] + "esac\necho GUARD-PASSED\n"
    refused = _run("sh", guard, values)
    assert refused.returncode == 1 and "MINIO_ROOT_PASSWORD" in refused.stderr
    assert "change-me" not in refused.stdout + refused.stderr
    passed = _run("sh", guard, _filled_env())
    assert passed.returncode == 0 and "GUARD-PASSED" in passed.stdout
    empty = _run("sh", guard, {**_filled_env(), "AWS_SECRET_ACCESS_KEY": ""})
    assert empty.returncode == 1


# -- tests: Dockerfile and .dockerignore ----------------------------------------------------

def _pinned(requirement: str) -> str:
    text = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    return re.search(rf"^{re.escape(requirement)}==(\S+)", text, flags=re.M).group(1)


def test_dockerfile_builds_on_the_pinned_airflow_image():
    froms = [args for instruction, args in dockerfile_instructions() if instruction == "FROM"]
    assert len(froms) == 1
    match = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)", froms[0])
    assert match, froms[0]
    version, python = match.groups()
    assert version == _pinned("apache-airflow") == "3.3.2"
    # requirements.txt is compiled for the project's interpreter, so the image needs the same.
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_dockerfile_installs_the_pins_and_the_package_where_the_code_looks():
    runs = [args for instruction, args in dockerfile_instructions() if instruction == "RUN"]
    copies = dockerfile_copies()
    dest_of = {src: dest for sources, dest in copies for src in sources}
    requirements = PurePosixPath(dest_of["requirements.txt"])
    version = _pinned("apache-airflow")
    assert any(f'"apache-airflow=={version}"' in run and f"-r {requirements}" in run
               and "--no-cache-dir" in run for run in runs)
    package_dir = PurePosixPath(dest_of["pyproject.toml"].rstrip("/"))
    assert any(re.search(rf"pip install .*--no-deps -e {re.escape(str(package_dir))}$", run)
               for run in runs), "install the package editable from its folder"
    # promptops.settings.PROJECT_ROOT is two levels above the package: include/ must sit in
    # the same folder as pyproject.toml, and the readme pyproject names must come along.
    assert PurePosixPath(dest_of["include"]) == package_dir / "include"
    readme = _pyproject()["project"]["readme"]
    assert readme in dest_of and dest_of[readme].rstrip("/") == str(package_dir)
    assert image_path_to_repo(str(package_dir / "include/promptops/settings.py")) == \
        ROOT / "include/promptops/settings.py"
    # Airflow's own folders in the image (AIRFLOW_HOME=/opt/airflow).
    assert dest_of["dags"] == "/opt/airflow/dags"
    assert dest_of["plugins"] == "/opt/airflow/plugins"


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_dockerfile_copies_paths_that_exist_and_are_in_the_build_context():
    copies = dockerfile_copies()
    assert copies
    for sources, _dest in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not excluded_from_build(source), f"COPY {source}: .dockerignore drops it"
    assert not excluded_from_build("include/promptops/settings.py")
    assert not excluded_from_build("include/config/scenarios/demo.yaml")
    assert not excluded_from_build("include/playbooks/drain_node.sh")


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image():
    for path in (".env", ".venv/bin/python", "data/lake/calls", "airflow_home/airflow.db",
                 ".git/config", "tests/conftest.py", "test-artifacts/x.png",
                 "include/promptops/__pycache__/lake.cpython-311.pyc",
                 "include/promptops.egg-info/PKG-INFO"):
        assert excluded_from_build(path), f"{path} would be sent to the image build"
