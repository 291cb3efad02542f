//! Weights used in place from a memory-mapped GGUF file: a CPU buffer over the map (no copy),
//! tensors placed at their file offsets, and a real matmul on them.

mod common;

use common::{rand_vec, rel_err};
use nijigen::formats::gguf::{GgufFile, GgufWriter, TensorDecl};
use nijigen::formats::MetaValue;
use nijigen::ggml::{self, Backend, Buffer, Context, GgmlType};

#[test]
fn matmul_on_weights_mapped_from_a_gguf_file() {
    let (k, n, m) = (256usize, 32usize, 4usize);
    let w = rand_vec(k * n, 7);
    let mut wq = vec![0u8; GgmlType::Q8_0.bytes_for((k * n) as u64).unwrap() as usize];
    ggml::quantize(GgmlType::Q8_0, &w, k, &mut wq).unwrap();
    let bias = rand_vec(n, 8);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.gguf");
    let decls = [
        TensorDecl::new("layer.weight", GgmlType::Q8_0, vec![n as u64, k as u64]),
        TensorDecl::new("layer.bias", GgmlType::F32, vec![n as u64]),
    ];
    let md = [(
        "general.architecture".to_string(),
        MetaValue::String("test".into()),
    )];
    let f = std::fs::File::create(&path).unwrap();
    let mut wr = GgufWriter::new(&path, f, &md, &decls).unwrap();
    wr.write_tensor("layer.weight", &wq).unwrap();
    let bias_bytes: Vec<u8> = bias.iter().flat_map(|v| v.to_le_bytes()).collect();
    wr.write_tensor("layer.bias", &bias_bytes).unwrap();
    wr.finish().unwrap();

    let g = GgufFile::open(&path).unwrap();
    let map = g.bytes();
    let buf = Buffer::from_host_bytes(map).unwrap();
    let ctx = Context::new_meta(8, 64).unwrap();
    let wt = ctx.new_tensor(GgmlType::Q8_0, &[k as i64, n as i64]);
    let bt = ctx.new_f32(&[n as i64]);
    for (t, name) in [(wt, "layer.weight"), (bt, "layer.bias")] {
        let info = g.header().tensor(name).unwrap();
        assert_eq!(info.size as usize, t.nbytes());
        buf.place(t, info.offset as usize).unwrap();
    }
    let x = rand_vec(k * m, 9);
    let xt = ctx.new_f32(&[k as i64, m as i64]).set_input();
    let y = ctx.add(ctx.mul_mat(wt, xt), bt).set_output();
    let mut graph = ctx.new_graph(64);
    graph.expand(y);
    let mut backend = Backend::cpu(2).unwrap();
    let mut alloc = backend.graph_allocator().unwrap();
    alloc.alloc_graph(&graph).unwrap();
    ggml::tensor_set_f32(xt, &x).unwrap();
    backend.compute(&graph).unwrap();
    let got = ggml::tensor_get_f32(y).unwrap();

    let mut wd = vec![0f32; k * n];
    ggml::dequantize(GgmlType::Q8_0, &wq, &mut wd).unwrap();
    let mut want = vec![0f32; n * m];
    for mi in 0..m {
        for ni in 0..n {
            want[mi * n + ni] = bias[ni]
                + (0..k)
                    .map(|ki| wd[ni * k + ki] * x[mi * k + ki])
                    .sum::<f32>();
        }
    }
    let e = rel_err(&got, &want);
    assert!(e < 1e-2, "rel err {e}");
    // The weight bytes were never copied: the map is still the only holder, and a tensor that
    // would run past the map is refused rather than read out of bounds.
    let extra = ctx.new_tensor(GgmlType::Q8_0, &[k as i64, n as i64]);
    assert!(buf.place(extra, map.len() - 10).is_err());
}
