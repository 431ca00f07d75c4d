"""The ``svd_lab_modes`` record of a saved video: the speed / exactness choices of the pack nodes upstream only."""

from __future__ import annotations

from comfyui_svd_lab.nodes.generation_info import generation_modes

PROMPT = {
    "1": {"class_type": "SVDLab_CheckpointLoader", "inputs": {"ckpt_name": "x.safetensors", "dtype": "bf16",
                                                             "compile": "regional", "attention": "auto"}},
    "2": {"class_type": "SVDLab_Sampler", "inputs": {"model": ["1", 0], "sampler": "euler", "steps": 12,
                                                     "step_cache": "deepcache", "cache_threshold": 0.1,
                                                     "seed": 5}},
    "3": {"class_type": "SVDLab_Decode", "inputs": {"model": ["1", 0], "latent": ["2", 0], "chunk_size": 4}},
    "4": {"class_type": "SVDLab_SaveVideo", "inputs": {"images": ["3", 0], "fps": 7.0}},
    # a second branch with another sampler that the saved video does not come from
    "5": {"class_type": "SVDLab_Sampler", "inputs": {"model": ["1", 0], "sampler": "lcm", "steps": 4,
                                                     "step_cache": "off", "cache_threshold": 0.1}},
    "6": {"class_type": "KSampler", "inputs": {"steps": 20, "sampler_name": "euler", "model": ["7", 0]}},
}


def test_only_the_nodes_upstream_of_the_save_node_with_their_mode_inputs():
    modes = generation_modes(PROMPT, "4")
    assert modes == {
        "1 SVDLab_CheckpointLoader": {"dtype": "bf16", "attention": "auto", "compile": "regional"},
        "2 SVDLab_Sampler": {"sampler": "euler", "steps": 12, "step_cache": "deepcache", "cache_threshold": 0.1},
        "3 SVDLab_Decode": {"chunk_size": 4},
    }  # node 5 (other branch) and core nodes are left out; seed and file names are not modes


def test_linked_mode_inputs_are_named_by_their_source():
    prompt = {**PROMPT, "2": {**PROMPT["2"], "inputs": {**PROMPT["2"]["inputs"], "steps": ["9", 0]}},
              "9": {"class_type": "PrimitiveInt", "inputs": {"value": 12}}}
    assert generation_modes(prompt, "4")["2 SVDLab_Sampler"]["steps"] == "<from node 9>"


def test_malformed_prompts_give_nothing_or_what_is_well_formed():
    assert generation_modes(None, "4") == {} and generation_modes(PROMPT, None) == {}
    assert generation_modes(PROMPT, "404") == {} and generation_modes({"4": "x"}, "4") == {}
    cyclic = {"1": {"class_type": "SVDLab_Sampler", "inputs": {"latent": ["2", 0], "steps": 3}},
              "2": {"class_type": "SVDLab_Decode", "inputs": {"latent": ["1", 0], "chunk_size": 2}},
              "3": {"class_type": "SVDLab_SaveVideo", "inputs": {"images": ["2", 0]}}}
    assert generation_modes(cyclic, "3") == {"1 SVDLab_Sampler": {"steps": 3}, "2 SVDLab_Decode": {"chunk_size": 2}}
    odd = {"1": {"class_type": "SVDLab_Sampler", "inputs": {"steps": {"nested": 1}}},
           "2": {"class_type": "SVDLab_SaveVideo", "inputs": {"images": ["1", 0]}}}
    assert generation_modes(odd, "2") == {"1 SVDLab_Sampler": {"steps": "{'nested': 1}"}}


def test_decode_node_precision_bf16_is_close_to_fp32(tmp_path):
    """Decode's precision widget reaches the decoder: bf16 frames differ from fp32's, by little."""
    import torch

    from comfyui_svd_lab.nodes import NODE_CLASS_MAPPINGS
    from comfyui_svd_lab.nodes.adapters import latents_to_comfy
    from comfyui_svd_lab.svd_model.weights.loader import load_bundle
    from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

    bundle = load_bundle(write_tiny_checkpoint(tmp_path / "svd.safetensors", seed=2))
    latent = latents_to_comfy(torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    decode = NODE_CLASS_MAPPINGS["SVDLab_Decode"]().decode
    fp32 = decode(bundle, latent, 3, 0)[0]
    assert torch.equal(decode(bundle, latent, 3, 0, precision="fp32")[0], fp32)
    bf16 = decode(bundle, latent, 3, 0, precision="bf16")[0]
    err = (bf16 - fp32).abs()
    assert 0 < err.max() < 0.1 and err.mean() < 0.01  # of [0, 1]
