"""The Slicer extension as Slicer's build and loader see it: every shipped file listed in the module's
CMakeLists.txt, a valid .ui holding every widget the code uses, a valid extension description and icon,
a core that imports nothing from the application, and a module and effect that import with only the
app-only modules (slicer, qt, ctk, vtk, the Segment Editor's) faked."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import struct
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from unittest import mock

import pytest

PLUGIN = Path(__file__).resolve().parents[1] / "slicer_plugin"
MODULE = PLUGIN / "AIAASegment"
APP_ONLY = ("slicer", "qt", "ctk", "vtk", "qSlicerSegmentationsEditorEffectsPythonQt", "SegmentEditorEffects")


def cmake_listed_files() -> set[str]:
    text = (MODULE / "CMakeLists.txt").read_text()
    name = re.search(r"set\(MODULE_NAME (\w+)\)", text).group(1)
    listed = set()
    for variable in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
        body = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S).group(1)
        listed |= {entry.replace("${MODULE_NAME}", name) for entry in body.split()}
    return listed


def shipped_files() -> set[str]:
    return {
        p.relative_to(MODULE).as_posix()
        for p in MODULE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"
    }


def test_every_shipped_file_is_listed_in_cmake_and_exists():
    listed = cmake_listed_files()
    assert shipped_files() - listed == set(), "files the build would not install"
    assert listed - shipped_files() == set(), "listed files that do not exist"


def test_extension_cmake_builds_the_module():
    text = (PLUGIN / "CMakeLists.txt").read_text()
    assert "find_package(Slicer REQUIRED)" in text and "add_subdirectory(AIAASegment)" in text
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL"):
        assert re.search(rf'set\({variable} "[^"]+"\)', text), variable
    assert "slicerMacroBuildScriptedModule(" in (MODULE / "CMakeLists.txt").read_text()


def test_extension_description_follows_the_index_schema():
    entry = json.loads((PLUGIN / "AIAASegment.json").read_text())
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled", "scm_revision",
               "scm_type", "scm_url", "tier"}
    assert set(entry) <= allowed  # the schema sets additionalProperties: false
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert "slicer-extension-catalog-entry-schema" in entry["$schema"]


@pytest.mark.parametrize("path", [PLUGIN / "AIAASegment.png", MODULE / "Resources/Icons/AIAASegment.png"])
def test_icons_are_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def test_ui_is_valid_xml_with_every_widget_the_panel_uses():
    ui_files = list((MODULE / "Resources" / "UI").glob("*.ui"))
    assert ui_files
    names = set()
    for path in ui_files:
        root = ET.parse(path).getroot()  # raises on malformed XML
        assert root.tag == "ui"
        names |= {widget.get("name") for widget in root.iter("widget")}
    source = (MODULE / "AIAASegment.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    prefixes = re.findall(r'"(\w+Model)"', source)  # model combos are looked up by prefix
    used |= {prefix + suffix for prefix in prefixes for suffix in ("ComboBox", "ReasonLabel")}
    assert used and used <= names, used - names


def test_core_imports_nothing_from_the_application():
    for path in (MODULE / "AIAASegmentLib").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0)
            for alias in node.names
        }
        third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
        assert third_party <= {"numpy", "requests"}, (path.name, third_party)
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, AIAASegmentLib; print(sorted(set(sys.modules) & set(sys.argv[1:])))",
         *APP_ONLY],
        cwd=MODULE, capture_output=True, text=True, check=True,
    )
    assert loaded.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ importing with app-only fakes


class FakeEffectFactory:
    def __init__(self):
        self.effects = []

    def registeredEffects(self):
        return self.effects


class FakeScriptedEffect:
    """qSlicerSegmentEditorScriptedEffect: loads the Python source and registers itself."""

    def __init__(self, factory):
        self.factory, self.name, self.source = factory, "", None

    def setPythonSource(self, path):
        self.source = path
        self.name = "AIAA"

    def self(self):
        return self

    def register(self):
        self.factory.effects.append(self)


@pytest.fixture
def app(monkeypatch):
    """The app-only modules as fakes; the plugin's own modules are imported fresh and dropped afterwards."""
    factory = FakeEffectFactory()
    slicer = types.ModuleType("slicer")
    slicer.app = mock.MagicMock(name="slicer.app")
    slicer.util = mock.MagicMock(name="slicer.util")
    slicer.util.mainWindow.return_value = None
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    scripted.ScriptedLoadableModule = ScriptedLoadableModule
    scripted.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    slicer.ScriptedLoadableModule = scripted
    effects = types.ModuleType("qSlicerSegmentationsEditorEffectsPythonQt")
    effects.qSlicerSegmentEditorEffectFactory = mock.MagicMock(instance=lambda: factory)
    effects.qSlicerSegmentEditorScriptedEffect = lambda parent: FakeScriptedEffect(factory)
    editor_effects = types.ModuleType("SegmentEditorEffects")

    class AbstractScriptedSegmentEditorEffect:
        def __init__(self, scriptedEffect):
            self.scriptedEffect = scriptedEffect

    editor_effects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    fakes = {
        "slicer": slicer, "slicer.ScriptedLoadableModule": scripted, "qt": mock.MagicMock(), "ctk": mock.MagicMock(),
        "vtk": mock.MagicMock(), "qSlicerSegmentationsEditorEffectsPythonQt": effects,
        "SegmentEditorEffects": editor_effects,
    }
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in [n for n in sys.modules if n.startswith("AIAASegment")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(MODULE))
    yield types.SimpleNamespace(slicer=slicer, factory=factory)
    for name in [n for n in sys.modules if n.startswith("AIAASegment")]:
        del sys.modules[name]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_module_registers_its_effect_once_startup_completes(app):
    module = load(MODULE / "AIAASegment.py", "AIAASegment")
    module.AIAASegment(types.SimpleNamespace())
    app.slicer.app.connect.assert_called_once_with("startupCompleted()", module.register_effect)
    assert app.factory.effects == []
    module.register_effect()  # what the signal does
    module.register_effect()  # a second call (e.g. module reload) does not add a duplicate
    assert [e.name for e in app.factory.effects] == ["AIAA"]
    assert app.factory.effects[0].source.endswith("AIAASegmentSlicer/SegmentEditorEffect.py")
    assert Path(app.factory.effects[0].source).is_file()


def test_module_loaded_after_startup_registers_at_once(app):
    app.slicer.util.mainWindow.return_value = mock.MagicMock(isVisible=lambda: True)
    module = load(MODULE / "AIAASegment.py", "AIAASegment")
    parent = types.SimpleNamespace()
    module.AIAASegment(parent)
    app.slicer.app.connect.assert_not_called()
    assert [e.name for e in app.factory.effects] == ["AIAA"]
    assert parent.title == "AIAA Segment" and "Segmentation" in parent.categories


def test_effect_imports_and_names_itself(app):
    effect_module = load(MODULE / "AIAASegmentSlicer" / "SegmentEditorEffect.py", "SegmentEditorEffect")
    scripted = types.SimpleNamespace()
    effect = effect_module.SegmentEditorEffect(scripted)
    assert scripted.name == "AIAA" and scripted.perSegment
    assert "AIAA Segment" in effect.helpText()
    assert effect.processInteractionEvents(None, 0, None) is False  # no tool active: clicks pass through
