//! Tokenizers for students: load an HF `tokenizer.json`, or train a
//! byte-level BPE in-process for a from-scratch student.

use std::path::Path;

use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Result, StudentError, io};

/// HF's companion file; only the fields stepwise reads or writes.
const CONFIG_FILE: &str = "tokenizer_config.json";

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct TokenizerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eos_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pad_token: Option<String>,
    /// stepwise's own: every token that ends generation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    stop_tokens: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chat_template: Option<String>,
}

/// End of a target sequence; generation stops on it.
pub const EOS: &str = "<|endoftext|>";
/// Padding; never a target.
pub const PAD: &str = "<|pad|>";

/// A tokenizer with the special ids the trainer and generator need, and a
/// pretrained model's chat template (kept in `tokenizer_config.json`, as HF does).
#[derive(Clone)]
pub struct StudentTokenizer {
    pub inner: Tokenizer,
    /// Appended to every training target.
    pub eos_id: u32,
    pub pad_id: u32,
    /// Generation stops on any of these (the end token and, for chat models,
    /// the end of a turn).
    pub stop_ids: Vec<u32>,
    pub chat_template: Option<String>,
}

/// One chat message, as the OpenAI API and chat templates name its fields.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

fn tok_err(what: impl std::fmt::Display) -> impl FnOnce(tokenizers::Error) -> StudentError {
    move |e| StudentError::Tokenizer(format!("{what}: {e}"))
}

impl StudentTokenizer {
    /// Trains a byte-level BPE on `texts`. Digits are split one per token:
    /// merged multi-digit tokens make arithmetic much harder to learn.
    pub fn train_bpe<I, S>(texts: I, vocab_size: usize) -> Result<StudentTokenizer>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let mut trainer = TrainerWrapper::BpeTrainer(
            BpeTrainerBuilder::new()
                .show_progress(false)
                .vocab_size(vocab_size)
                .min_frequency(2)
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .special_tokens(vec![AddedToken::from(EOS, true), AddedToken::from(PAD, true)])
                .build(),
        );
        let mut tok = Tokenizer::new(BPE::default());
        tok.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        tok.with_decoder(Some(ByteLevel::default()));
        tok.train(&mut trainer, texts)
            .map_err(tok_err("training the BPE tokenizer"))?;
        StudentTokenizer::from_tokenizer(tok, "the trained tokenizer")
    }

    /// Wraps a tokenizer, finding its end and padding tokens (padding falls
    /// back to the end token, as for most pretrained decoders).
    pub fn from_tokenizer(inner: Tokenizer, what: &str) -> Result<StudentTokenizer> {
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let eos_id = find(&[EOS, "<|im_end|>", "</s>", "<eos>"]).ok_or_else(|| {
            StudentError::Tokenizer(format!("{what}: no end-of-text token ({EOS}, <|im_end|>, </s>)"))
        })?;
        let pad_id = find(&[PAD, "<|pad|>", "<pad>"]).unwrap_or(eos_id);
        Ok(StudentTokenizer {
            inner,
            eos_id,
            pad_id,
            stop_ids: vec![eos_id],
            chat_template: None,
        })
    }

    /// Loads `tokenizer.json`, and `tokenizer_config.json` beside it when
    /// present (end and padding tokens, chat template).
    pub fn load(path: &Path) -> Result<StudentTokenizer> {
        let inner = Tokenizer::from_file(path).map_err(tok_err(path.display()))?;
        let mut tok = StudentTokenizer::from_tokenizer(inner, &path.display().to_string())?;
        let cfg_path = path.with_file_name(CONFIG_FILE);
        if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
            let cfg: TokenizerConfig = serde_json::from_str(&text).map_err(|e| StudentError::Format {
                path: cfg_path.clone(),
                msg: e.to_string(),
            })?;
            let id = |name: &Option<String>, field: &str| -> Result<Option<u32>> {
                match name {
                    None => Ok(None),
                    Some(n) => tok.inner.token_to_id(n).map(Some).ok_or_else(|| StudentError::Format {
                        path: cfg_path.clone(),
                        msg: format!("{field} {n:?} is not in the vocabulary"),
                    }),
                }
            };
            if let Some(eos) = id(&cfg.eos_token, "eos_token")? {
                tok.eos_id = eos;
            }
            if let Some(pad) = id(&cfg.pad_token, "pad_token")? {
                tok.pad_id = pad;
            }
            let mut stops = vec![tok.eos_id];
            for s in &cfg.stop_tokens {
                stops.extend(id(&Some(s.clone()), "stop_tokens")?);
            }
            for i in stops {
                tok.add_stop(i);
            }
            tok.chat_template = cfg.chat_template;
        }
        Ok(tok)
    }

    /// Writes `tokenizer.json` and, beside it, `tokenizer_config.json`,
    /// each atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.inner.to_string(false).map_err(tok_err(path.display()))?;
        stepwise_datasets::atomic::write_bytes(path, json.as_bytes())?;
        let name = |id: u32| self.inner.id_to_token(id);
        let cfg = TokenizerConfig {
            eos_token: name(self.eos_id),
            pad_token: name(self.pad_id),
            stop_tokens: self.stop_ids.iter().filter_map(|&i| name(i)).collect(),
            chat_template: self.chat_template.clone(),
        };
        let p = path.with_file_name(CONFIG_FILE);
        let cfg = serde_json::to_string_pretty(&cfg).expect("serialises");
        Ok(stepwise_datasets::atomic::write_bytes(&p, cfg.as_bytes())?)
    }

    /// The prompt a chat model expects for `messages`, from its own template,
    /// ending with the assistant's turn opened.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| StudentError::Tokenizer("this tokenizer has no chat template".into()))?;
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
            },
        );
        let chat_err = |e: minijinja::Error| StudentError::Tokenizer(format!("chat template: {e:#}"));
        env.add_template("chat", template).map_err(chat_err)?;
        let tmpl = env.get_template("chat").map_err(chat_err)?;
        let eos = self.inner.id_to_token(self.eos_id).unwrap_or_default();
        tmpl.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => true,
            bos_token => "",
            eos_token => eos,
        })
        .map_err(chat_err)
    }

    /// Makes `id` end generation too (kept sorted, without repeats).
    pub fn add_stop(&mut self, id: u32) {
        if let Err(at) = self.stop_ids.binary_search(&id) {
            self.stop_ids.insert(at, id);
        }
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tok_err("encoding"))?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err("decoding"))
    }
}
