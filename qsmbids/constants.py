"""Physical constants shared by every floor of the house (STYLE §1): a bottom leaf, standard library only.

γ̄ = γ/2π of ¹H, CODATA 2018 (42.577 478 518 MHz/T): one number, in the two units the code uses — Hz/T in the
physics (:mod:`qsmbids.qsm.phase`, the simulator, the networks' phase scale) and MHz/T where BIDS sidecars give
``ImagingFrequency`` in MHz (:mod:`qsmbids.utils.sidecars`, :mod:`qsmbids.sim.bids`).

>>> GAMMA_BAR_HZ_T == GAMMA_BAR_MHZ_T * 1e6
True
"""

__all__ = ["GAMMA_BAR_HZ_T", "GAMMA_BAR_MHZ_T"]

#: γ/2π for ¹H in MHz/T (CODATA 2018): the frequency in MHz of protons at 1 T.
GAMMA_BAR_MHZ_T: float = 42.5774785178
#: γ/2π for ¹H in Hz/T.
GAMMA_BAR_HZ_T: float = GAMMA_BAR_MHZ_T * 1e6
