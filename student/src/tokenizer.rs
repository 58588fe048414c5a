//! Tokenizers for students: load an HF `tokenizer.json`, or train a
//! byte-level BPE in-process for a from-scratch student.

use std::path::Path;

use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Result, StudentError};

/// End of a target sequence; generation stops on it.
pub const EOS: &str = "<|endoftext|>";
/// Padding; never a target.
pub const PAD: &str = "<|pad|>";

/// A tokenizer with the two special ids the trainer and generator need.
#[derive(Clone)]
pub struct StudentTokenizer {
    pub inner: Tokenizer,
    pub eos_id: u32,
    pub pad_id: u32,
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
        Ok(StudentTokenizer { inner, eos_id, pad_id })
    }

    pub fn load(path: &Path) -> Result<StudentTokenizer> {
        let inner = Tokenizer::from_file(path).map_err(tok_err(path.display()))?;
        StudentTokenizer::from_tokenizer(inner, &path.display().to_string())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(tok_err(path.display()))
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
