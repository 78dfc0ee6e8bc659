"""Code that ships inside an exported MONAI bundle, in its ``scripts/`` package.

An exported bundle must run where covidseg is not installed. :func:`covidseg.bundle.shipping.write_scripts`
copies these modules, and covidseg's post-processing modules (numpy/scipy only), into the bundle's ``scripts/``
folder and rewrites their ``from covidseg... import`` lines into relative imports of the shipped copies. Inside
covidseg the modules import covidseg's own post-processing, so they are tested against the library directly.

* ``transforms``: :class:`~covidseg.bundle.bundle_scripts.transforms.LungOpacityPostprocessd`, the lung-mask and
  morphology step as a MONAI dictionary transform;
* ``inference``: :class:`~covidseg.bundle.bundle_scripts.inference.SliceEvaluator`, the loop that runs the
  bundle's dataset, inferer and post-processing without pytorch-ignite.
"""
