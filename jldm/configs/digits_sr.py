"""Super-resolution on the digits: a class-conditional DDPM that turns a 4x4 digit into a 16x16
one. The UNet sees the low-resolution image, bilinearly upsampled, as extra input channels.

Sample with `sample.py --workdir W --low_res small.png` (a 4x4 image), or from a test digit.
"""

from jldm.configs import digits_ddpm


def get_config():
    c = digits_ddpm.get_config()
    c.model.low_res_factor = 4
    return c
