//! [`ModelId`]: every model a run compares, as a type. Pairing a distilled
//! student with its label-only partner, choosing the verdict's floor and
//! naming directories go through it; it is a string only at the Parquet and
//! JSON edges (`teacher`, `majority`, `chance`, `base`, `distill`,
//! `label-gold-f250`, ...).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use stepwise_student::data::Variant;

/// A trained student: its variant and the fraction of the training data it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StudentId {
    pub variant: Variant,
    /// The training-data fraction in thousandths (1000: all of it).
    pub permille: u16,
}

impl StudentId {
    pub fn new(variant: Variant, fraction: f64) -> StudentId {
        StudentId {
            variant,
            permille: (fraction * 1000.0).round().clamp(1.0, 1000.0) as u16,
        }
    }

    pub fn fraction(self) -> f64 {
        self.permille as f64 / 1000.0
    }

    /// The same data with another variant: a distilled student's label-only partner.
    pub fn with_variant(self, variant: Variant) -> StudentId {
        StudentId { variant, ..self }
    }
}

impl fmt::Display for StudentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.permille >= 1000 {
            write!(f, "{}", self.variant.as_str())
        } else {
            write!(f, "{}-f{:03}", self.variant.as_str(), self.permille)
        }
    }
}

/// Every model whose answers a run scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelId {
    Teacher,
    /// Always the most common training answer of the example's task.
    Majority,
    /// A uniform guess among the choices or classes.
    Chance,
    /// The student before training.
    Base,
    Student(StudentId),
}

impl ModelId {
    /// The floors a student must beat: knowing nothing of the task.
    pub const FLOORS: [ModelId; 3] = [ModelId::Base, ModelId::Majority, ModelId::Chance];

    pub fn student(self) -> Option<StudentId> {
        match self {
            ModelId::Student(s) => Some(s),
            _ => None,
        }
    }

    /// A distilled student (its rationales are asked for and judged).
    pub fn is_distilled(self) -> bool {
        self.student().is_some_and(|s| s.variant == Variant::Distill)
    }

    /// Baselines computed from the data, with no model behind them.
    pub fn is_computed(self) -> bool {
        matches!(self, ModelId::Majority | ModelId::Chance)
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelId::Teacher => f.write_str("teacher"),
            ModelId::Majority => f.write_str("majority"),
            ModelId::Chance => f.write_str("chance"),
            ModelId::Base => f.write_str("base"),
            ModelId::Student(s) => s.fmt(f),
        }
    }
}

impl FromStr for ModelId {
    type Err = String;
    fn from_str(s: &str) -> Result<ModelId, String> {
        Ok(match s {
            "teacher" => ModelId::Teacher,
            "majority" => ModelId::Majority,
            "chance" => ModelId::Chance,
            "base" => ModelId::Base,
            _ => {
                let (name, permille) = match s.rsplit_once("-f") {
                    Some((n, f)) if f.len() == 3 && f.bytes().all(|b| b.is_ascii_digit()) => {
                        (n, f.parse::<u16>().expect("three digits"))
                    }
                    _ => (s, 1000),
                };
                let variant = Variant::parse(name).ok_or_else(|| {
                    format!("{s:?}: expected teacher, majority, chance, base or a student (distill, label-gold, label-teacher, optionally -fNNN)")
                })?;
                ModelId::Student(StudentId { variant, permille })
            }
        })
    }
}

impl PartialEq<&str> for ModelId {
    fn eq(&self, other: &&str) -> bool {
        other.parse::<ModelId>().is_ok_and(|o| o == *self)
    }
}

impl Serialize for ModelId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ModelId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_partners_share_the_fraction() {
        for s in [
            "teacher",
            "majority",
            "chance",
            "base",
            "distill",
            "label-gold",
            "label-teacher-f125",
            "distill-f500",
        ] {
            assert_eq!(s.parse::<ModelId>().unwrap().to_string(), s);
        }
        let d = StudentId::new(Variant::Distill, 0.25);
        assert_eq!(d.to_string(), "distill-f250");
        assert_eq!(d.with_variant(Variant::LabelGold).to_string(), "label-gold-f250");
        assert!("student-x".parse::<ModelId>().is_err());
    }
}
