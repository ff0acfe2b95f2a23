"""Static checks of docker/Dockerfile, docker/docker-compose.yml and .dockerignore (no Docker engine)."""

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "docker-compose.yml"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def constraints() -> dict[str, str]:
    """Pinned versions of constraints.txt, by lower-case name."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[name.lower()] = version
    return pins


@pytest.fixture(scope="module")
def instructions() -> list[dict]:
    """The Dockerfile's instructions, comments left out."""
    parser = DockerfileParser(path=str(DOCKERFILE))
    return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def values(instructions: list[dict], name: str) -> list[str]:
    return [i["value"] for i in instructions if i["instruction"] == name]


def pip_installs(commands: list[str]) -> list[list[str]]:
    """The tokens of every `pip install` command in shell command lines (split on &&)."""
    found = []
    for command in commands:
        for part in command.split("&&"):
            if not re.search(r"\bpip\b", part):  # other recipes (the chromium step) need not be shell-split
                continue
            tokens = shlex.split(part)
            if "pip" in {Path(t).name for t in tokens} and "install" in tokens:
                found.append(tokens)
    return found


def makefile_recipes() -> list[str]:
    """The Makefile's recipe lines with its variables expanded."""
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*)$", text, re.MULTILINE))

    def expand(line: str) -> str:
        while (new := re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], ""), line)) != line:
            line = new
        return line

    return [expand(line[1:]) for line in text.splitlines() if line.startswith("\t")]


def check_install_recipe(installs: list[list[str]]) -> None:
    """Shared by the Dockerfile and the Makefile: constraints, torch, monailabel --no-deps."""
    assert installs
    for tokens in installs:
        assert "constraints.txt" in tokens and tokens[tokens.index("constraints.txt") - 1] == "-c", tokens
    assert any(f"torch=={constraints()['torch']}" in tokens for tokens in installs)
    monailabel = [t for t in installs if f"monailabel=={constraints()['monailabel']}" in t]
    assert monailabel and all("--no-deps" in tokens for tokens in monailabel)


def test_base_image_is_python_slim() -> None:
    assert set(DockerfileParser(path=str(DOCKERFILE)).parent_images) == {"python:3.11-slim"}


def test_runs_as_non_root_user(instructions: list[dict]) -> None:
    names = [i["instruction"] for i in instructions]
    users = [n for n, i in enumerate(instructions) if i["instruction"] == "USER"]
    assert users and instructions[users[-1]]["value"].split(":")[0] not in {"root", "0"}
    assert all(users[-1] < names.index(start) for start in ("ENTRYPOINT", "CMD") if start in names)


def test_healthcheck_port_and_volume(instructions: list[dict]) -> None:
    (healthcheck,) = values(instructions, "HEALTHCHECK")
    assert "urllib" in healthcheck and "http://127.0.0.1:5000/health" in healthcheck
    assert "5000" in " ".join(values(instructions, "EXPOSE")).split()
    assert "/data/model_repo" in " ".join(values(instructions, "VOLUME"))


def test_serves_on_all_interfaces_with_data_volume(instructions: list[dict]) -> None:
    command = [arg for name in ("ENTRYPOINT", "CMD") for arg in json.loads(values(instructions, name)[-1])]
    assert command[:2] == ["aiaa", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--model-repo") + 1] == "/data/model_repo"


def test_dockerfile_installs_from_constraints(instructions: list[dict]) -> None:
    installs = pip_installs(values(instructions, "RUN"))
    check_install_recipe(installs)
    torch = [t for t in installs if any(a.startswith("torch==") for a in t)]
    assert torch and all(TORCH_CPU_INDEX in tokens for tokens in torch)
    assert not any("torchvision" in i["content"] for i in instructions)


def test_makefile_uses_the_same_recipe() -> None:
    check_install_recipe(pip_installs(makefile_recipes()))


def test_copied_paths_exist(instructions: list[dict]) -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for value in values(instructions, "COPY"):
        args = [a for a in value.split() if not a.startswith("--")]
        if "--from=" in value:
            continue
        for source in args[:-1]:
            assert (ROOT / source).exists(), source
            assert Path(source).parts[0] not in ignored, source


def test_compose_service() -> None:
    service = yaml.safe_load(COMPOSE.read_text())["services"]["aiaa"]
    assert "5000:5000" in service["ports"]
    assert any(v.split(":")[1] == "/data/model_repo" for v in service["volumes"])
    assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert {"AIAA_ADMIN_USER", "AIAA_ADMIN_PASSWORD"} <= set(service["environment"])
    assert service["restart"] == "unless-stopped"
