"""3D Slicer module 'AIAA Segment': auto-segmentation, extreme points and deepgrow clicks from an AIAA server.

Thin by design: geometry, the client, sessions and checks live in AIAASegmentLib (pure Python, tested
outside Slicer); MRML in/out and the shared logic in AIAASegmentSlicer. This file holds the module
description, the Segment Editor effect registration and the panel's wiring.
"""

import os

import qt
import slicer
from AIAASegmentLib import MIN_EXTREME_POINTS, AIAAError, Preferences, normalise_url, remember_url
from AIAASegmentLib.preferences import DEFAULT_URL
from AIAASegmentSlicer import mrml_bridge
from AIAASegmentSlicer.logic import Target, shared_logic
from AIAASegmentSlicer.runner import RequestRunner
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget

EFFECT_NAME = "AIAA"
SETTINGS = "AIAASegment/"
MODEL_COMBOS = {"segmentation": "segmentationModel", "annotation": "annotationModel", "deepgrow": "deepgrowModel"}


class AIAASegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "AIAA Segment"
        parent.categories = ["Segmentation"]
        parent.dependencies = ["Segmentations", "Markups"]
        parent.contributors = ["AIAA MONAI server contributors"]
        parent.helpText = (
            "Segment with an AIAA server: Auto-segment, 6 extreme points, or foreground/background clicks; "
            "Save label sends a finished segment to the server for training. "
            "Also available as the 'AIAA' effect of the Segment Editor."
        )
        parent.acknowledgementText = "Speaks the NVIDIA Clara AIAA REST API; models built with MONAI."
        # The effect factory is ready only once the application has started; a module loaded later
        # (added by path in a running Slicer) registers at once.
        main_window = slicer.util.mainWindow()
        if main_window is not None and main_window.isVisible():
            register_effect()
        else:
            slicer.app.connect("startupCompleted()", register_effect)


def register_effect() -> None:
    """Add the AIAA effect to the Segment Editor (once)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    factory = effects.qSlicerSegmentEditorEffectFactory.instance()
    if any(effect.name == EFFECT_NAME for effect in factory.registeredEffects()):
        return
    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    path = os.path.join(os.path.dirname(__file__), "AIAASegmentSlicer", "SegmentEditorEffect.py")
    instance.setPythonSource(path.replace("\\", "/"))
    instance.self().register()


class AIAASegmentWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = slicer.util.childWidgetVariables(self._load_ui())
        self.logic = shared_logic()
        self.runner = RequestRunner(self.logic, self.ui.progressBar, self.ui.cancelButton, self.ui.statusLabel)
        self._observations = []
        self._setup_editor()
        self._load_settings()
        self.ui.connectButton.connect("clicked()", self.on_connect)
        self.ui.autoSegmentButton.connect("clicked()", self.on_auto_segment)
        self.ui.extremePointsButton.connect("toggled(bool)", lambda on: self._place(on, self.extreme_node))
        self.ui.foregroundButton.connect("toggled(bool)", lambda on: self._place(on, self.foreground_node))
        self.ui.backgroundButton.connect("toggled(bool)", lambda on: self._place(on, self.background_node))
        self.ui.clearPointsButton.connect("clicked()", self.on_clear_points)
        self.ui.saveLabelButton.connect("clicked()", self.on_save_label)
        for box in (self.ui.sessionCheckBox, self.ui.compressCheckBox):
            box.connect("toggled(bool)", lambda _: self._save_settings())
        self.ui.timeoutSpinBox.connect("valueChanged(int)", lambda _: self._save_settings())
        self._update_models()

    def cleanup(self):
        for node, tag in self._observations:
            node.RemoveObserver(tag)

    # ------------------------------------------------------------------------------------ building
    def _load_ui(self):
        widget = slicer.util.loadUI(self.resourcePath("UI/AIAASegment.ui"))
        self.layout.addWidget(widget)
        widget.setMRMLScene(slicer.mrmlScene)
        return widget

    def _setup_editor(self):
        """A Segment Editor inside the panel: source volume, segmentation, selected segment and undo/redo."""
        self.editor = slicer.qMRMLSegmentEditorWidget()
        self.editor.setMRMLScene(slicer.mrmlScene)
        self.editor.setMRMLSegmentEditorNode(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
        self.editor.undoEnabled = True  # saveStateForUndo() below feeds its Undo/Redo buttons
        self.ui.editorFrame.layout().addWidget(self.editor)
        self.extreme_node = self._points_node("AIAA extreme points", (1.0, 1.0, 0.0))
        self.foreground_node = self._points_node("AIAA foreground", (0.0, 1.0, 0.0))
        self.background_node = self._points_node("AIAA background", (1.0, 0.0, 0.0))

    def _points_node(self, name, colour):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSelectedColor(colour)
        node.SetSaveWithScene(False)
        tag = node.AddObserver(node.PointPositionDefinedEvent, lambda caller, event: self.on_point_placed(caller))
        self._observations.append((node, tag))
        return node

    # ------------------------------------------------------------------------------------ settings
    def _load_settings(self):
        settings = qt.QSettings()
        history = settings.value(SETTINGS + "serverHistory") or []
        self.ui.serverComboBox.addItems(list(history) if not isinstance(history, str) else [history])
        if not history:
            self.ui.serverComboBox.addItem(DEFAULT_URL)
        self.ui.sessionCheckBox.checked = slicer.util.toBool(settings.value(SETTINGS + "useSessions", True))
        self.ui.compressCheckBox.checked = slicer.util.toBool(settings.value(SETTINGS + "compress", True))
        self.ui.timeoutSpinBox.value = int(settings.value(SETTINGS + "timeout", 60))
        self.ui.adminUserLineEdit.text = settings.value(SETTINGS + "adminUser", "") or ""

    def _save_settings(self):
        settings = qt.QSettings()
        settings.setValue(SETTINGS + "useSessions", self.ui.sessionCheckBox.checked)
        settings.setValue(SETTINGS + "compress", self.ui.compressCheckBox.checked)
        settings.setValue(SETTINGS + "timeout", self.ui.timeoutSpinBox.value)
        self.logic.preferences = Preferences(
            self.ui.sessionCheckBox.checked, self.ui.compressCheckBox.checked, float(self.ui.timeoutSpinBox.value)
        )
        if self.logic.client is not None:
            self.ui.serverStatusLabel.text = "Settings changed: press Connect to use them."

    # ------------------------------------------------------------------------------------ actions
    def on_connect(self):
        url = normalise_url(self.ui.serverComboBox.currentText)
        self._save_settings()
        try:
            with slicer.util.WaitCursor():
                models = self.logic.connect(url)
        except AIAAError as error:
            self.ui.serverStatusLabel.text = str(error)
            self._update_models()
            return
        history = remember_url([self.ui.serverComboBox.itemText(n) for n in range(self.ui.serverComboBox.count)], url)
        qt.QSettings().setValue(SETTINGS + "serverHistory", history)
        self.ui.serverComboBox.clear()
        self.ui.serverComboBox.addItems(history)
        self.ui.serverStatusLabel.text = f"Connected: {len(models)} model(s)."
        self._update_models()

    def _update_models(self):
        for model_type, prefix in MODEL_COMBOS.items():
            combo, reason = getattr(self.ui, prefix + "ComboBox"), getattr(self.ui, prefix + "ReasonLabel")
            combo.clear()
            for model in self.logic.models_of_type(model_type):
                combo.addItem(model.name)
                combo.setItemData(combo.count - 1, model.description, qt.Qt.ToolTipRole)
            reason.text = self.logic.empty_reason(model_type)
            reason.visible = bool(reason.text)

    def _target(self) -> Target:
        node = self.editor.mrmlSegmentEditorNode()
        source = node.GetSourceVolumeNode() if hasattr(node, "GetSourceVolumeNode") else node.GetMasterVolumeNode()
        return Target(source, node.GetSegmentationNode(), node.GetSelectedSegmentID() or "")

    def on_auto_segment(self):
        target = self._target()
        self.runner.start(
            lambda: self.logic.prepare_auto_segmentation(target, self.ui.segmentationModelComboBox.currentText),
            lambda result, request: self.logic.apply_auto_segmentation(result, request, self.editor.saveStateForUndo),
            "Auto-segmentation",
            target.volume_node.GetName() if target.volume_node else "",
        )

    def on_save_label(self):
        """Save the selected segment into the server's training datastore (admin credentials: the user name is
        remembered, the password only while Slicer runs)."""
        qt.QSettings().setValue(SETTINGS + "adminUser", self.ui.adminUserLineEdit.text)
        credentials = (self.ui.adminUserLineEdit.text.strip(), self.ui.adminPasswordLineEdit.text)
        try:
            with slicer.util.WaitCursor():
                self.ui.statusLabel.text = self.logic.save_label(self._target(), credentials)
        except AIAAError as error:
            self.ui.statusLabel.text = str(error)

    def on_point_placed(self, node):
        target = self._target()

        def apply(result, request):
            return self.logic.apply_to_segment(result, request, self.editor.saveStateForUndo)

        name = target.volume_node.GetName() if target.volume_node else ""
        if node is self.extreme_node:
            count = mrml_bridge.control_points_world(node).shape[0]
            self.ui.extremeCountLabel.text = f"{count} / {MIN_EXTREME_POINTS}"
            if count < MIN_EXTREME_POINTS:
                return
            self.ui.extremePointsButton.checked = False
            model = self.ui.annotationModelComboBox.currentText
            self.runner.start(
                lambda: self.logic.prepare_extreme_points(target, mrml_bridge.control_points_world(node), model),
                apply, "Extreme points", name,
            )
        else:  # each foreground or background click runs deepgrow with all clicks so far
            model = self.ui.deepgrowModelComboBox.currentText
            self.runner.start(
                lambda: self.logic.prepare_deepgrow(
                    target, mrml_bridge.control_points_world(self.foreground_node),
                    mrml_bridge.control_points_world(self.background_node), model,
                ),
                apply, "Deepgrow", name,
            )

    def on_clear_points(self):
        for node in (self.extreme_node, self.foreground_node, self.background_node):
            node.RemoveAllControlPoints()
        self.ui.extremeCountLabel.text = f"0 / {MIN_EXTREME_POINTS}"

    def _place(self, on: bool, node):
        """Persistent point placing into `node` while its button is down; one tool at a time."""
        buttons = {self.extreme_node: self.ui.extremePointsButton, self.foreground_node: self.ui.foregroundButton,
                   self.background_node: self.ui.backgroundButton}
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        if not on:
            if not any(button.checked for button in buttons.values()):
                interaction.SwitchToViewTransformMode()
            return
        for other, button in buttons.items():
            if other is not node:
                button.checked = False
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selection.SetActivePlaceNodeID(node.GetID())
        interaction.SetPlaceModePersistence(1)
        interaction.SetCurrentInteractionMode(interaction.Place)

