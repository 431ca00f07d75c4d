"""The EDM diffusion maths, as pure functions over tensors: scalings and the v-denoiser, noise (the one draw,
always from a passed generator), sigma schedules, samplers and classifier-free guidance."""
