"""The node's fixed-point A-weighting filter: its design, and its exact response.

The firmware (firmware/lib/soundlevel.py) filters 20-bit samples at 48 kHz with

    DC blocker   (1 - z^-1) / (1 - (1 - 2^-13) z^-1)
    low end      (1 - z^-1) / (1 - (1 - k) z^-1)   for k = K1, K1, K2, K3 (Q19, Q19, Q16, Q14)
    top end      (1 + c z^-1) / (1 - p z^-1)       for (c, p) = (C5, P5), (C6, P6) (Q11)

The low sections are the analog curve's zeros at DC and poles at 20.6 Hz (twice), 107.7 Hz and
737.9 Hz. The bilinear transform would put 8 kHz 0.5 dB low, so the top two sections are fitted
(minimax, weighted to 31.5 Hz - 8 kHz) to the exact curve, then every coefficient is rounded to
the integer the firmware multiplies by and nudged to the best integer neighbour. The coefficient
widths are what the 32-bit products allow (see tests/firmware/test_soundlevel.py).

`python -m meetkit_tools.aweight_design` prints the constants for soundlevel.py. numpy and scipy
(the dev extra) are needed for the design only; the response functions need numpy.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

FS = 48000.0
DC_SHIFT = 13
#: (name, Q bits) of the integer coefficients, in the firmware's order
COEFFS = (("K1", 19), ("K2", 16), ("K3", 14), ("C5", 11), ("P5", 11), ("C6", 11), ("P6", 11))
_POLES = (20.598997, 107.65265, 737.86223, 12194.217)

#: IEC 61672-1:2013 Table 3 (../shared/notes/iec61672.md): nominal frequency, A (dB), class 1
#: upper and lower acceptance limits (dB; None: no lower limit)
IEC_TABLE3 = (
    (10, -70.4, 3.0, None), (12.5, -63.4, 2.5, None), (16, -56.7, 2.0, -4.0), (20, -50.5, 2.0, -2.0),
    (25, -44.7, 2.0, -1.5), (31.5, -39.4, 1.5, -1.5), (40, -34.6, 1.0, -1.0), (50, -30.2, 1.0, -1.0),
    (63, -26.2, 1.0, -1.0), (80, -22.5, 1.0, -1.0), (100, -19.1, 1.0, -1.0), (125, -16.1, 1.0, -1.0),
    (160, -13.4, 1.0, -1.0), (200, -10.9, 1.0, -1.0), (250, -8.6, 1.0, -1.0), (315, -6.6, 1.0, -1.0),
    (400, -4.8, 1.0, -1.0), (500, -3.2, 1.0, -1.0), (630, -1.9, 1.0, -1.0), (800, -0.8, 1.0, -1.0),
    (1000, 0.0, 0.7, -0.7), (1250, 0.6, 1.0, -1.0), (1600, 1.0, 1.0, -1.0), (2000, 1.2, 1.0, -1.0),
    (2500, 1.3, 1.0, -1.0), (3150, 1.2, 1.0, -1.0), (4000, 1.0, 1.0, -1.0), (5000, 0.5, 1.5, -1.5),
    (6300, -0.1, 1.5, -2.0), (8000, -1.1, 1.5, -2.5), (10000, -2.5, 2.0, -3.0), (12500, -4.3, 2.0, -5.0),
    (16000, -6.6, 2.5, -16.0), (20000, -9.3, 3.0, None),
)


def exact_frequency(nominal: float) -> float:
    """The exact base-10 one-third-octave frequency behind a nominal one (IEC 61260-1)."""
    return 1000.0 * 10 ** (round(10 * math.log10(nominal / 1000.0)) / 10)


def a_exact_db(f: np.ndarray | float) -> np.ndarray:
    """The analytic A weighting of IEC 61672-1 (Annex E), 0 dB at 1 kHz."""
    f1, f2, f3, f4 = _POLES

    def r(x: np.ndarray) -> np.ndarray:
        x2 = x * x
        return f4**2 * x2**2 / ((x2 + f1**2) * np.sqrt((x2 + f2**2) * (x2 + f3**2)) * (x2 + f4**2))

    f = np.asarray(f, float)
    return 20 * np.log10(r(f) / r(np.array(1000.0)))


def sections(ints: dict[str, int]) -> list[tuple[list[float], list[float]]]:
    """(b, a) of every first-order section, DC blocker first, from the integer coefficients."""
    q = {name: ints[name] / 2.0**bits for name, bits in COEFFS}
    out = [([1.0, -1.0], [1.0, -(1.0 - 2.0**-DC_SHIFT)])]
    for k in (q["K1"], q["K1"], q["K2"], q["K3"]):
        out.append(([1.0, -1.0], [1.0, -(1.0 - k)]))
    for c, p in ((q["C5"], q["P5"]), (q["C6"], q["P6"])):
        out.append(([1.0, c], [1.0, -p]))
    return out


def response_db(ints: dict[str, int], f: np.ndarray | float, with_dc: bool = True) -> np.ndarray:
    """|H(f)| of the filter as the firmware implements it (float, no rounding), in dB."""
    zi = np.exp(-2j * np.pi * np.asarray(f, float) / FS)
    h = np.ones_like(zi)
    for i, (b, a) in enumerate(sections(ints)):
        if i == 0 and not with_dc:
            continue
        h = h * (b[0] + b[1] * zi) / (a[0] + a[1] * zi)
    return 20 * np.log10(np.abs(h))


def gain_1k_db(ints: dict[str, int]) -> float:
    """The filter's gain at 1 kHz (the firmware subtracts it: A is 0 dB there)."""
    return float(response_db(ints, 1000.0))


def deviation_db(ints: dict[str, int], f: np.ndarray | float) -> np.ndarray:
    """Filter response (normalised at 1 kHz) minus the exact A curve."""
    return response_db(ints, f) - gain_1k_db(ints) - a_exact_db(f)


def design() -> dict[str, int]:
    from scipy import optimize

    grid = np.geomspace(25, 20000, 800)
    weight = np.where(grid <= 8000, 1.0, np.where(grid <= 12500, 0.25, 0.08))

    def as_ints(x: np.ndarray) -> dict[str, int]:
        return {name: int(round(v * 2**bits)) for (name, bits), v in zip(COEFFS, x)}

    def cost_float(x: np.ndarray) -> float:
        ints = {name: v * 2**bits for (name, bits), v in zip(COEFFS, x)}
        return float(np.max(np.abs(deviation_db(ints, grid)) * weight))  # type: ignore[arg-type]

    def cost(ints: dict[str, int]) -> float:
        return float(np.max(np.abs(deviation_db(ints, grid)) * weight))

    matched = [1 - math.exp(-2 * math.pi * f / FS) for f in _POLES[:3]]
    x = np.array(matched + [0.19, 0.255, 0.2567, 0.015])
    for _ in range(5):
        x = optimize.minimize(cost_float, x, method="Nelder-Mead",
                              options={"xatol": 1e-13, "fatol": 1e-13, "maxiter": 60000, "maxfev": 120000}).x
    best = as_ints(x)
    best_cost = cost(best)
    names = [n for n, _ in COEFFS]
    improved = True
    while improved:  # integer neighbours, one and two coefficients at a time
        improved = False
        moves = [((n,), (d,)) for n in names for d in (-2, -1, 1, 2)]
        moves += [((a, b), (da, db)) for a, b in itertools.combinations(names, 2)
                  for da in (-1, 1) for db in (-1, 1)]
        for keys, deltas in moves:
            cand = dict(best)
            for k, d in zip(keys, deltas):
                cand[k] += d
            c = cost(cand)
            if c < best_cost - 1e-12:
                best, best_cost, improved = cand, c, True
    return best


def main() -> None:
    ints = design()
    for name, bits in COEFFS:
        print(f"_{name} = const({ints[name]})  # Q{bits}")
    print(f"A_GAIN_DB = {gain_1k_db(ints):.6f}")
    band = [exact_frequency(f) for f, *_ in IEC_TABLE3 if 31.5 <= f <= 8000]
    print(f"max deviation 31.5 Hz - 8 kHz: {np.max(np.abs(deviation_db(ints, np.array(band)))):.4f} dB")


if __name__ == "__main__":
    main()
