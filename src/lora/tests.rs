use super::*;

#[test]
fn lora_spec_parses_file_and_weight() {
    let (p, m) = parse_lora_spec("a/b.safetensors:0.75").unwrap();
    assert_eq!((p.to_str().unwrap(), m), ("a/b.safetensors", 0.75));
    let (p, m) = parse_lora_spec("a/b.safetensors").unwrap();
    assert_eq!((p.to_str().unwrap(), m), ("a/b.safetensors", 1.0));
    let (p, m) = parse_lora_spec("C:\\loras\\x.safetensors").unwrap();
    assert_eq!((p.to_str().unwrap(), m), ("C:\\loras\\x.safetensors", 1.0));
    let (_, m) = parse_lora_spec("x.safetensors:-1").unwrap();
    assert_eq!(m, -1.0);
    assert!(parse_lora_spec("").is_err());
    assert!(parse_lora_spec(":0.5").is_err());
    assert!(parse_lora_spec("x:inf").is_err());
}

#[test]
fn diffusers_unet_paths_get_their_dots_back() {
    for (flat, dotted) in [
        (
            "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
        ),
        (
            "up_blocks_0_resnets_2_time_emb_proj",
            "up_blocks.0.resnets.2.time_emb_proj",
        ),
        (
            "mid_block_attentions_0_transformer_blocks_3_ff_net_0_proj",
            "mid_block.attentions.0.transformer_blocks.3.ff.net.0.proj",
        ),
        (
            "down_blocks_0_downsamplers_0_conv",
            "down_blocks.0.downsamplers.0.conv",
        ),
        ("time_embedding_linear_1", "time_embedding.linear_1"),
        ("conv_in", "conv_in"),
    ] {
        assert_eq!(unflatten_diffusers_unet(flat), dotted);
    }
}
