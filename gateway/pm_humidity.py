"""Humidity correction of optical PM readings (kappa-Koehler), opt-in, next to the raw values.

An optical PM sensor counts particles with the water they hold: in humid air hygroscopic particles
grow and the sensor reads more mass than a reference instrument, which dries its sample. Using
kappa-Koehler theory (Petters & Kreidenweis 2007), the ratio of wet to dry particle mass is

    C(aw) = 1 + (kappa / 1.65) / (-1 + 1 / aw),      aw = RH / 100 (water activity)
    PM_dry = PM / C

as applied to low-cost optical particle counters by Crilley et al. 2018 (AMT 11, 709-720,
doi:10.5194/amt-11-709-2018) and Di Antonio et al. 2018 (Sensors 18, 2790); 1.65 is the ratio of
the dry particles' density to water's they assume. kappa is the bulk hygroscopicity of the
aerosol: KAPPA (0.3) is a typical continental value (Andreae & Rosenfeld 2008); observed values
span about 0.1 to 0.9 (Petters & Kreidenweis 2007), so set it for your site when you can fit it
against a reference station.

Limits: C grows without bound as RH approaches 100 % (fog, droplets that no formula turns back into
dry particles), so above RH_MAX (95 %) nothing is corrected. The RH is the node's own BME280, in
the housing: warmed by the electronics, it can read lower than the ambient RH, which makes the
correction too small.
"""

from __future__ import annotations

KAPPA = 0.3
#: the dry particles' density relative to water's, as in Crilley et al. 2018
DENSITY_RATIO = 1.65
#: above this relative humidity (%) PM is not corrected
RH_MAX = 95.0
#: the quantities corrected, and the names of their corrected values
CORRECTED = {"pm1": "pm1_corr", "pm25": "pm25_corr", "pm10": "pm10_corr"}

FLAG = "corrected"  # on every corrected value
FLAG_NO_RH = "no_rh"  # the record has no RH: no corrected value
FLAG_RH_TOO_HIGH = "rh_too_high"  # RH above RH_MAX: no corrected value


def growth(rh: float, kappa: float = KAPPA) -> float:
    """C, the wet-to-dry mass ratio at relative humidity `rh` (%, 0 <= rh < 100)."""
    if not 0 <= rh < 100:
        raise ValueError(f"relative humidity {rh} % is outside 0..100")
    if rh == 0:
        return 1.0
    aw = rh / 100
    return 1 + (kappa / DENSITY_RATIO) / (-1 + 1 / aw)


def correct(pm: float | None, rh: float | None, kappa: float = KAPPA) -> tuple[float | None, str | None]:
    """(PM_dry, None), or (None, the flag saying why there is none). An RH below 0 % (which an
    older store may hold) is no RH at all: as without one."""
    if rh is None or rh < 0:
        return None, FLAG_NO_RH
    if rh > RH_MAX:
        return None, FLAG_RH_TOO_HIGH
    if pm is None:
        return None, None
    return pm / growth(rh, kappa), None
