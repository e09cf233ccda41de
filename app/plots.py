"""Live plots (pyqtgraph), fed with worker events and redrawn at most every 100 ms.

    Layer error  per-layer relative output error as bars coloured by bits, filling in as
                 `layer` events arrive
    Curves       every `metric` against step: tuning loss (train), perplexity and KL (eval)
    Fitness      EvoPress best fitness (KL to the dense model) per generation
    Spikes       spike score per layer (max/median of per-token input max-abs)
    Pareto       average bits against perplexity over all runs of the model (from history)

Events are only appended to lists as they arrive; a single timer turns them into arrays
and calls setData, so thousands of events per second cost one redraw per 100 ms.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QGraphicsItem, QLabel, QStackedWidget, QTabWidget, QVBoxLayout, QWidget

REDRAW_MS = 100
ERROR_TITLES = {"output": "Relative output error per layer",
                "weight": "Relative weight error per layer (RTN without calibration data: ‖ΔW‖² / ‖W‖²)"}
CURVE_NOTE = "tuning loss (train) and evaluation perplexity / KL against step, as runs report them"
SKIP_METRICS = ("tokens",)      # bookkeeping, not a curve worth a plot
BIT_COLOURS = {2: "#d62728", 3: "#ff7f0e", 4: "#e6b800", 5: "#2ca02c", 6: "#17becf", 7: "#1f77b4",
               8: "#1f4e9c", 16: "#8c8c8c"}
CURVE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"]


def bits_colour(bits) -> str:
    try:
        return BIT_COLOURS.get(int(bits), "#444444")
    except (TypeError, ValueError):
        return "#444444"


def cache_axes(plot_item: pg.PlotItem) -> None:
    """Keep each axis as a pixmap until its range changes: drawing tick labels is the
    most expensive part of a repaint, and most repaints only change the data."""
    for name in ("left", "bottom", "right", "top"):
        axis = plot_item.getAxis(name)
        axis.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)


def _plot(title: str, x: str, y: str) -> pg.PlotWidget:
    widget = pg.PlotWidget(title=title)
    cache_axes(widget.getPlotItem())
    widget.setLabel("bottom", x)
    widget.setLabel("left", y)
    widget.showGrid(x=True, y=True, alpha=0.2)
    widget.setMenuEnabled(False)
    return widget


def _page(plot: QWidget, note: QLabel, empty: str) -> tuple[QWidget, QStackedWidget]:
    """A plot with a note under it; until data arrives, a line saying what will show here."""
    page = QWidget()
    layout = QVBoxLayout(page)
    layout.setContentsMargins(2, 2, 2, 2)
    stack = QStackedWidget()
    placeholder = QLabel(empty, wordWrap=True, alignment=Qt.AlignmentFlag.AlignCenter)
    placeholder.setStyleSheet("color: #6b7580; font-size: 11pt; padding: 30px;")
    stack.addWidget(placeholder)
    stack.addWidget(plot)
    layout.addWidget(stack, 1)
    layout.addWidget(note)
    return page, stack


def fit_range(plot, xs, ys, fixed_x: bool = False) -> None:
    """Autorange, except along an axis where every value is the same (one point, or a flat
    line): pyqtgraph would then spread a zero span over the axis (ticks reading
    "20.18361967787298" five times, or a step axis from -400 to 400); give it a sensible span.
    `fixed_x`: x spans exactly `xs`, which may hold more than this plot's own points (plots
    stacked one above another all show every step)."""
    for axis, values in (("x", xs), ("y", ys)):
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        low, high = float(values.min()), float(values.max())
        flat = high - low <= 1e-9 * max(1.0, abs(high))
        if not flat and not (axis == "x" and fixed_x):
            plot.enableAutoRange(**{axis: True})
            continue
        pad = (1.0 if axis == "x" else max(abs(low) * 0.1, 1e-3)) if flat else 0.03 * (high - low)
        (plot.setXRange if axis == "x" else plot.setYRange)(low - pad, high + pad, padding=0)


class LivePlots(QTabWidget):
    planRequested = Signal(dict)        # a Pareto point with a plan_file was clicked

    def __init__(self, parent=None, live: bool = True) -> None:
        super().__init__(parent)
        self.order: dict[str, int] = {}                   # layer name -> x position
        self.errors: dict[str, tuple[float, object]] = {}  # layer -> (rel_error, bits)
        self.spikes: dict[str, float] = {}
        self.series: dict[tuple[str, str], tuple[list, list]] = {}
        self._curves: dict[tuple[str, str], pg.PlotDataItem] = {}
        self._dirty = False

        self.error_kind = "output"        # "weight": RTN without calibration data measures ‖ΔW‖²/‖W‖²
        self.error_plot = _plot(ERROR_TITLES["output"], "layer (inventory order)", "rel. error")
        self.error_bars = pg.BarGraphItem(x=[], height=[], width=0.8)
        self.error_plot.addItem(self.error_bars)
        legend = "  ".join(f"<span style='color:{c}'>■</span> {'16' if b == 16 else b}"
                           for b, c in BIT_COLOURS.items())
        self.error_note = QLabel(f"colour = bits: {legend}")
        self.stacks: dict[str, QStackedWidget] = {}
        self._add("errors", self.error_plot, self.error_note, "Layer error",
                  "Per-layer errors appear here while a quantize, search or tune job runs.")

        # One plot per metric name (loss, ppl, kl, ...), stacked, x axes linked.
        self.curve_plot = pg.GraphicsLayoutWidget()
        self._metric_plots: dict[str, pg.PlotItem] = {}
        self.curve_note = QLabel(CURVE_NOTE)
        self.curve_note.setWordWrap(True)
        self._add("curves", self.curve_plot, self.curve_note, "Loss / ppl / KL",
                  "Loss, perplexity and KL curves appear here when a tune or evaluate job reports them.")

        self.fitness_plot = _plot("EvoPress best fitness", "generation", "KL to dense (lower is better)")
        self.fitness_curve = self.fitness_plot.plot([], [], pen=pg.mkPen("#9467bd", width=2), symbol="o", symbolSize=5)
        self._add("fitness", self.fitness_plot, QLabel("best candidate's KL(dense ‖ candidate) per generation"),
                  "Fitness", "An EvoPress search (Run → Strategy, method evopress) draws its best fitness per "
                  "generation here.")

        self.spike_plot = _plot("Spike score per layer", "layer (inventory order)", "max / median of input max-abs")
        self.spike_bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush="#d62728")
        self.spike_plot.addItem(self.spike_bars)
        self.spike_plot.setLogMode(y=False)
        self.spike_note = QLabel("")
        self._add("spikes", self.spike_plot, self.spike_note, "Spikes",
                  "A spike-aware search (Run → Strategy, method spike) draws each layer's spike score here.")

        self.pareto_plot = _plot("Pareto: average bits against perplexity", "average code bits", "perplexity")
        self._pareto_labels: list[pg.TextItem] = []
        self.pareto_points = pg.ScatterPlotItem(size=10, hoverable=True, tip=self._pareto_tip)
        self.pareto_front = pg.PlotDataItem([], [], pen=pg.mkPen("#2ca02c", width=1.5, style=pg.QtCore.Qt.PenStyle.DashLine))
        self.pareto_plot.addItem(self.pareto_front)
        self.pareto_plot.addItem(self.pareto_points)
        self.pareto_points.sigClicked.connect(self._pareto_clicked)
        self.pareto_note = QLabel("runs of this model with a perplexity, from the history folder")
        self._add("pareto", self.pareto_plot, self.pareto_note, "Pareto",
                  "Evaluate the open model and its quantized checkpoints (Run → Evaluate): each perplexity "
                  "becomes a point at its average bits.")
        self.warning_text = ""

        self._timer = QTimer(self, interval=REDRAW_MS, timeout=self.redraw)
        if live:
            self._timer.start()

    def _add(self, key: str, plot: QWidget, note: QLabel, title: str, empty: str) -> None:
        page, self.stacks[key] = _page(plot, note, empty)
        self.addTab(page, title)

    def _show(self, key: str, has_data: bool) -> None:
        stack = self.stacks[key]
        if stack.currentIndex() != int(has_data):
            stack.setCurrentIndex(int(has_data))

    # --- input ---------------------------------------------------------------------------

    def set_layers(self, names: list[str]) -> None:
        self.order = {n: i for i, n in enumerate(names)}
        # The x range is the inventory, fixed: bars filling in do not rescale the x axis.
        for plot in (self.error_plot, self.spike_plot):
            plot.setXRange(-1, max(len(names), 1), padding=0)
            plot.enableAutoRange(x=False)
        self._dirty = True

    def clear_run(self) -> None:
        """Forget everything a run drew (a new quantize, search or tune)."""
        self.errors.clear()
        self.spikes.clear()
        self.error_kind = "output"
        self.clear_curves()

    def clear_curves(self) -> None:
        """Forget the curves only: an evaluation keeps the layer errors of the run it measures."""
        self.series.clear()
        self.curve_plot.clear()
        self._metric_plots.clear()
        self._curves.clear()
        self.fitness_curve.setData([], [])
        self.warning_text = ""
        self._dirty = True

    def warn(self, event: dict) -> None:
        """A warning from the run (tuning diverging): said under the curves, which it concerns."""
        self.warning_text = f"<span style='color:#8a5a00'><b>⚠ {event.get('message', '')}</b></span>"
        self._dirty = True

    def feed(self, event: dict) -> None:
        """Take one worker event (cheap: no drawing here)."""
        kind = event.get("type")
        if kind == "layer":
            name = event.get("name", "")
            if name not in self.order:
                self.order[name] = len(self.order)
            if event.get("rel_error") is not None:
                self.errors[name] = (float(event["rel_error"]), event.get("bits"))
                if not event.get("keep"):
                    self.error_kind = "weight" if event.get("error_kind") == "weight" else "output"
            spike = event.get("spike_score")
            if spike is not None:
                self.spikes[name] = float(spike)
        elif kind == "metric" and event.get("value") is not None:
            name, split = str(event.get("name")), str(event.get("split", ""))
            steps, values = self.series.setdefault((name, split), ([], []))
            step = float(event.get("step", len(steps)))
            if steps and step <= steps[-1]:
                # a resumed run repeats the steps after its checkpoint: its new points
                # replace the old ones from there on
                keep = next((i for i, s in enumerate(steps) if s >= step), len(steps))
                del steps[keep:], values[keep:]
            steps.append(step)
            values.append(float(event["value"]))
        else:
            return
        self._dirty = True

    def load_events(self, events: list[dict]) -> None:
        """A whole finished run at once (history view); shows the first page with data."""
        self.clear_run()
        for event in events:
            self.feed(event)
        self.redraw()
        fitness = any(name == "fitness" for name, _ in self.series)
        curves = any(name not in SKIP_METRICS and name != "fitness" for name, _ in self.series)
        for index, has_data in enumerate((bool(self.errors), curves, fitness, bool(self.spikes))):
            if has_data:
                self.setCurrentIndex(index)
                break

    # --- drawing ---------------------------------------------------------------------------

    def redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        title = ERROR_TITLES[self.error_kind]
        if self.error_plot.getPlotItem().titleLabel.text != title:
            self.error_plot.setTitle(title)
            self.error_plot.setLabel("left", "rel. weight error" if self.error_kind == "weight" else "rel. error")
        self._draw_bars(self.error_bars, {n: e for n, (e, _) in self.errors.items()},
                        brushes=[bits_colour(self.errors[n][1]) for n in self._sorted(self.errors)])
        self._draw_bars(self.spike_bars, self.spikes)
        top = sorted(self.spikes.items(), key=lambda kv: -kv[1])[:3]
        self.spike_note.setText("highest: " + ", ".join(f"{n} {v:.1f}" for n, v in top) if top else "")
        self._show("errors", bool(self.errors))
        self._show("spikes", bool(self.spikes))
        self._show("fitness", any(name == "fitness" for name, _ in self.series))
        self._show("curves", any(name not in SKIP_METRICS and name != "fitness" for name, _ in self.series))
        self.curve_note.setText(self.warning_text or CURVE_NOTE)
        for i, ((name, split), (steps, values)) in enumerate(sorted(self.series.items())):
            if name == "fitness":
                self.fitness_curve.setData(np.asarray(steps), np.asarray(values))
                fit_range(self.fitness_plot.getPlotItem(), steps, values)
                continue
            if name in SKIP_METRICS:
                continue
            curve = self._curves.get((name, split))
            if curve is None:
                colour = CURVE_COLOURS[len(self._curves) % len(CURVE_COLOURS)]
                plot = self._metric_plot(name)
                curve = plot.plot([], [], name=f"{name} ({split})", pen=pg.mkPen(colour, width=2),
                                  symbol="o", symbolSize=5, symbolBrush=colour, symbolPen=None)
                curve.setDownsampling(auto=True, method="peak")
                curve.setClipToView(True)
                self._curves[(name, split)] = curve
            if len(steps) > 200:
                curve.setSymbol(None)
            curve.setData(np.asarray(steps), np.asarray(values))
        steps = [x for (n, _), (st, _) in self.series.items() if n in self._metric_plots for x in st]
        for name, plot in self._metric_plots.items():
            ys = [y for (n, _), (_, vs) in self.series.items() if n == name for y in vs]
            # every plot spans every step (not linked: pyqtgraph maps a link through each view's
            # width on screen, which a plot not yet laid out gets wrong, hiding a step-0 point)
            fit_range(plot, steps, ys, fixed_x=True)

    def _metric_plot(self, name: str) -> pg.PlotItem:
        plot = self._metric_plots.get(name)
        if plot is None:
            plot = self.curve_plot.addPlot(row=len(self._metric_plots), col=0)
            cache_axes(plot)
            plot.setLabel("left", name)
            plot.getAxis("left").setWidth(64)     # one width: the plots' steps line up one above another
            plot.setLabel("bottom", "step")
            plot.showGrid(x=True, y=True, alpha=0.2)
            plot.addLegend(offset=(-10, 10))
            self._metric_plots[name] = plot
        return plot

    def _sorted(self, values: dict) -> list[str]:
        return sorted(values, key=lambda n: self.order.get(n, 0))

    def _draw_bars(self, bars: pg.BarGraphItem, values: dict[str, float], brushes=None) -> None:
        names = self._sorted(values)
        x = np.array([self.order.get(n, 0) for n in names], dtype=float)
        h = np.array([values[n] for n in names], dtype=float)
        opts = {"x": x, "height": h, "width": 0.8}
        if brushes is not None:
            opts["brushes"] = brushes
        bars.setOpts(**opts)

    # --- Pareto --------------------------------------------------------------------------------

    def set_pareto(self, points: list[dict]) -> None:
        """points: {"bits", "ppl", "label", "current"}; draws them and the lower-left front."""
        spots = [{"pos": (p["bits"], p["ppl"]), "data": p,
                  "brush": "#d62728" if p.get("current") else ("#8c8c8c" if p["bits"] >= 16 else "#1f77b4"),
                  "size": 13 if p.get("current") else 9} for p in points if p["ppl"] and p["ppl"] > 0]
        self.pareto_points.setData(spots)
        front, best = [], float("inf")
        for p in sorted(points, key=lambda p: (p["bits"], p["ppl"])):
            if p["ppl"] and p["ppl"] < best:
                best = p["ppl"]
                front.append(p)
        self.pareto_front.setData([p["bits"] for p in front], [p["ppl"] for p in front])
        for label in self._pareto_labels:
            self.pareto_plot.removeItem(label)
        self._pareto_labels = []
        middle = (min(p["bits"] for p in points) + max(p["bits"] for p in points)) / 2 if points else 0
        for p in points:
            if p["ppl"] and p["ppl"] > 0:
                # Labels point inwards, so the ones at the right edge stay inside the plot.
                label = pg.TextItem(f"{p['bits']:.2f} bits · ppl {p['ppl']:.2f}", color="#333333",
                                    anchor=(1, 1) if p["bits"] > middle else (0, 1))
                label.setPos(p["bits"], p["ppl"])
                self.pareto_plot.addItem(label)
                self._pareto_labels.append(label)
        fit_range(self.pareto_plot.getPlotItem(), [p["bits"] for p in points if p["ppl"]],
                  [p["ppl"] for p in points if p["ppl"]])
        self._show("pareto", bool(spots))
        n = len(spots)
        self.pareto_note.setText(f"{n} run{'' if n == 1 else 's'} of this model; dashed: the Pareto front "
                                 "(fewest bits for a perplexity); grey = dense")

    @staticmethod
    def _pareto_tip(x, y, data) -> str:
        hint = "\nclick: load this plan into the table" if data.get("plan_file") else ""
        return f"{data['label']}\n{data['bits']:.3f} bits, perplexity {data['ppl']:.3f}{hint}"

    def _pareto_clicked(self, item, spots, *args) -> None:
        """A click on a point that has a plan asks for it (planRequested: the point's dict)."""
        for spot in spots:
            data = spot.data()
            if data and data.get("plan_file"):
                self.planRequested.emit(dict(data))
                return
