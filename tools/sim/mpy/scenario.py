# A scenario's true values and faults over time. Plain Python, run by MicroPython (the simulator)
# and CPython (the tests compute their expected values with it): the single source of truth.
#
# A quantity is the piecewise-linear interpolation of its `points` [[t_s, value], ...] (held before
# the first point and after the last; two points at the same time make a step) plus a `wave`
# {"amp", "period"[, "phase"]} = amp * sin(2*pi*(t + phase)/period); `wave` may also be a list of
# such waves, which add up. A fault {"kind", "from", "to", ...} is active for from <= t < to.
import math
from array import array

_TWO_PI = 2 * math.pi


class Scenario:
    def __init__(self, obj):
        self.name = obj.get("name", "")
        self.start = obj.get("start")
        self._q = {}
        truth = obj.get("truth") or {}
        for k in truth:
            spec = truth[k]
            pts = spec.get("points") or [[0, 0]]
            # by time, keeping the order of equal times (a step): MicroPython's sort is not stable
            pts = [p for i, p in sorted(enumerate(pts), key=lambda ip: (ip[1][0], ip[0]))]
            w = spec.get("wave")
            if w is None:
                w = []
            elif isinstance(w, dict):
                w = [w]
            waves = [(float(x.get("amp", 0)), _TWO_PI / float(x["period"]), float(x.get("phase", 0)))
                     for x in w]
            # [times, values, waves, index of the segment used last]
            self._q[k] = [array("d", [float(p[0]) for p in pts]), array("d", [float(p[1]) for p in pts]),
                          waves, 0]
        self.faults = [f for f in (obj.get("faults") or [])]

    def value(self, name, t, default=None):
        """The true value of `name` at scenario second `t` (default when the scenario lacks it)."""
        q = self._q.get(name)
        if q is None:
            return default
        xs = q[0]
        ys = q[1]
        if t <= xs[0]:
            v = ys[0]
        elif t >= xs[-1]:
            v = ys[-1]
        else:
            i = q[3]
            if not xs[i] <= t < xs[i + 1]:
                lo = 0
                hi = len(xs) - 1
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if xs[mid] <= t:
                        lo = mid
                    else:
                        hi = mid
                i = q[3] = lo
            x0 = xs[i]
            v = ys[i] + (ys[i + 1] - ys[i]) * (t - x0) / (xs[i + 1] - x0)
        for amp, w, ph in q[2]:
            v += amp * math.sin(w * (t + ph))
        return v

    def fault(self, kind, t):
        """The active fault of this kind at second `t` (its dict), or None."""
        for f in self.faults:
            if f["kind"] == kind and f["from"] <= t < f["to"]:
                return f
        return None

    def last_end(self, kind, t):
        """The latest end (`to`) of a fault of this kind at or before `t`, or None."""
        e = None
        for f in self.faults:
            if f["kind"] == kind and f["to"] <= t and (e is None or f["to"] > e):
                e = f["to"]
        return e
