"""qsmbids.qsm — the numerical core of QSM: tensors in, tensors out.

No files, no nipype, no CLI. Every function takes torch tensors (or NumPy arrays, returned as NumPy),
works in float32/complex64 by default and runs on the device of its input. Stages:

================  ==========================================================================
module            contents
================  ==========================================================================
``phase``         phase units and scaling, rad ↔ Hz ↔ ppm, B0 direction from the affine
``fourier``       dipole kernel, SMV kernel, padding, finite differences, forward model
``mask``          magnitude and phase-quality brain masks
``unwrap``        Laplacian, quality-guided (ROMEO-style) and skimage unwrapping, multi-echo
``echoes``        multi-echo combination to a total field (Hz) with phase-offset removal
``background``    V-SHARP, RESHARP, PDF, LBV background field removal
``inversion``     TKD, TSVD, Tikhonov, iLSQR, TV-ADMM, RTS, MEDI, TGV (``invert``)
``reference``     susceptibility referencing
``relax``         R2*/T2* mapping
``swi``           susceptibility-weighted imaging and minIP
``metrics``       NRMSE, HFEN, XSIM, SSIM, PSNR, correlation, linearity, streaking
``phantoms``      analytic test phantoms with closed-form fields
================  ==========================================================================
"""
