"""The 'AIAA' Segment Editor effect: the same tools as the module panel, clicked straight in the slice views.

Loaded by Slicer from this path (see `register_effect` in AIAASegment.py); it shares the panel's connection
through `shared_logic()`, so connect once in the AIAA Segment module. App-only (Qt, slice views).
"""

import os

import qt
import vtk
from AIAASegmentLib import MIN_EXTREME_POINTS
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from AIAASegmentSlicer.logic import Target, shared_logic
from AIAASegmentSlicer.runner import RequestRunner

MODES = ("extreme", "foreground", "background")  # the click tools; clicks are kept per tool


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "AIAA"
        scriptedEffect.perSegment = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.logic = shared_logic()
        self.points = {mode: [] for mode in MODES}  # world positions clicked in this segment
        self.mode = None

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        cloned = effects.qSlicerSegmentEditorScriptedEffect(None)
        cloned.setPythonSource(__file__.replace("\\", "/"))
        return cloned

    def icon(self):
        path = os.path.join(os.path.dirname(__file__), "..", "Resources", "Icons", "AIAASegment.png")
        return qt.QIcon(path)

    def helpText(self):
        return (
            "<html>Segment with the AIAA server chosen in the <b>AIAA Segment</b> module (press Connect there).<br>"
            "<b>Auto-segment</b>: the whole volume. <b>Extreme points</b>: click the 6 outermost points of the "
            "structure. <b>Foreground/Background</b>: each click refines the selected segment.</html>"
        )

    def setupOptionsFrame(self):
        self.models = {}
        form = qt.QFormLayout()
        for model_type, label in (("segmentation", "Auto model:"), ("annotation", "Extreme points model:"),
                                  ("deepgrow", "Deepgrow model:")):
            self.models[model_type] = qt.QComboBox()
            form.addRow(label, self.models[model_type])
        self.auto_button = qt.QPushButton("Auto-segment")
        self.auto_button.connect("clicked()", self.on_auto_segment)
        form.addRow(self.auto_button)
        self.mode_buttons = {}
        row = qt.QHBoxLayout()
        for mode, text in (("extreme", f"Extreme points (0 / {MIN_EXTREME_POINTS})"), ("foreground", "Foreground"),
                           ("background", "Background")):
            button = qt.QPushButton(text)
            button.checkable = True
            button.connect("toggled(bool)", lambda on, m=mode: self.on_mode(m, on))
            self.mode_buttons[mode] = button
            row.addWidget(button)
        form.addRow(row)
        clear = qt.QPushButton("Clear points")
        clear.connect("clicked()", self.clear_points)
        form.addRow(clear)
        self.status = qt.QLabel()
        self.status.wordWrap = True
        self.progress, self.cancel = qt.QProgressBar(), qt.QPushButton("Cancel")
        form.addRow(self.progress, self.cancel)
        form.addRow(self.status)
        frame = qt.QWidget()
        frame.setLayout(form)
        self.scriptedEffect.addOptionsWidget(frame)
        self.runner = RequestRunner(self.logic, self.progress, self.cancel, self.status)

    def activate(self):
        for model_type, combo in self.models.items():
            combo.clear()
            combo.addItems([m.name for m in self.logic.models_of_type(model_type)])
            combo.toolTip = self.logic.empty_reason(model_type)

    def deactivate(self):
        self.mode = None
        for button in self.mode_buttons.values():
            button.checked = False

    def on_mode(self, mode, on):
        if on:
            for other, button in self.mode_buttons.items():
                if other != mode:
                    button.checked = False
            self.mode = mode
        elif self.mode == mode:
            self.mode = None

    def clear_points(self):
        self.points = {mode: [] for mode in MODES}
        self.mode_buttons["extreme"].text = f"Extreme points (0 / {MIN_EXTREME_POINTS})"

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if self.mode is None or eventId != vtk.vtkCommand.LeftButtonPressEvent:
            return False
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        world = self.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
        self.points[self.mode].append(list(world))
        if self.mode == "extreme":
            count = len(self.points["extreme"])
            self.mode_buttons["extreme"].text = f"Extreme points ({count} / {MIN_EXTREME_POINTS})"
            if count >= MIN_EXTREME_POINTS:
                self._run_extreme_points()
        else:
            self._run_deepgrow()
        return True  # the click was ours: no painting or window/level

    # ------------------------------------------------------------------------------------ requests
    def _target(self) -> Target:
        node = self.scriptedEffect.parameterSetNode()
        source = node.GetSourceVolumeNode() if hasattr(node, "GetSourceVolumeNode") else node.GetMasterVolumeNode()
        return Target(source, node.GetSegmentationNode(), node.GetSelectedSegmentID() or "")

    def _apply_to_segment(self, result, request):
        return self.logic.apply_to_segment(result, request, self.scriptedEffect.saveStateForUndo)

    def on_auto_segment(self):
        target = self._target()
        model = self.models["segmentation"].currentText
        self.runner.start(
            lambda: self.logic.prepare_auto_segmentation(target, model),
            lambda result, request: self.logic.apply_auto_segmentation(
                result, request, self.scriptedEffect.saveStateForUndo
            ),
            "Auto-segmentation",
            _name(target),
        )

    def _run_extreme_points(self):
        target = self._target()
        points, model = list(self.points["extreme"]), self.models["annotation"].currentText
        self.mode_buttons["extreme"].checked = False
        self.clear_points()
        self.runner.start(lambda: self.logic.prepare_extreme_points(target, points, model),
                          self._apply_to_segment, "Extreme points", _name(target))

    def _run_deepgrow(self):
        target = self._target()
        foreground, background = list(self.points["foreground"]), list(self.points["background"])
        model = self.models["deepgrow"].currentText
        self.runner.start(lambda: self.logic.prepare_deepgrow(target, foreground, background, model),
                          self._apply_to_segment, "Deepgrow", _name(target))


def _name(target: Target) -> str:
    return target.volume_node.GetName() if target.volume_node else ""
