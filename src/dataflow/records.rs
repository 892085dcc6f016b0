//! The records of the analysis state and their keys. Each record is a named key and the artifact
//! holding its value; keys are structs (not tuples), and their fields are declared in the order
//! records sort by (story before layer before feature set …), which is also the order of the
//! rows of every table written from a [`Snapshot`].

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::features::FeatureSet;
use crate::store::artifacts::ArtifactId;

/// (story id, story artifact)
pub type StoryRec = (String, ArtifactId);
/// (story id, (subject, response artifact))
pub type ResponseRec = (String, (String, ArtifactId));
/// (language, reading-data id) of a `[reading]` pipeline
pub type ReadingRec = (String, ArtifactId);
/// (subject, `voxel-subject` artifact) of a `[voxelwise]` pipeline
pub type VoxelSubjectRec = (String, ArtifactId);

/// The SAE group of every text when one SAE is shared by all languages.
pub const SHARED_SAE_GROUP: &str = "all";

/// Key of one SAE (and of its labels): the group is the texts' language with
/// `[sae] per-language` (the default), else [`SHARED_SAE_GROUP`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SaeKey {
    pub group: String,
    pub layer: usize,
}

/// Key of one response table: a subject's responses to a story.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResponseKey {
    pub story: String,
    pub subject: String,
}

/// Key of a per-(story, layer) artifact: SAE codes, reconstructions, prediction-error designs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StoryLayerKey {
    pub story: String,
    pub layer: usize,
}

/// Key of one design matrix, and of the summary over subjects of its fits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DesignKey {
    pub story: String,
    pub layer: usize,
    pub feature_set: FeatureSet,
}

/// Key of one summary over subjects: the design it summarises.
pub type SummaryKey = DesignKey;

/// Key of one encoding fit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FitKey {
    pub subject: String,
    pub story: String,
    pub layer: usize,
    pub feature_set: FeatureSet,
}

impl FitKey {
    /// The key of the summary this fit goes into.
    pub fn summary_key(&self) -> SummaryKey {
        DesignKey {
            story: self.story.clone(),
            layer: self.layer,
            feature_set: self.feature_set.clone(),
        }
    }
}

/// Key of one voxelwise design (all the stories of a layer and feature set), and of its fits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VoxelKey {
    pub layer: usize,
    pub feature_set: FeatureSet,
}

/// Key of one subject's voxelwise fit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VoxelFitKey {
    pub subject: String,
    pub layer: usize,
    pub feature_set: FeatureSet,
}

/// Key of one variance partition by category.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionKey {
    pub subject: String,
    pub story: String,
    pub layer: usize,
}

/// One record of the analysis state: a key and the artifact holding its value. The state after
/// an epoch is a set of these; between epochs, records are added and retracted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Record {
    /// An input story: (story, story artifact)
    Story(String, ArtifactId),
    /// An input response table
    Response(ResponseKey, ArtifactId),
    /// (story, words artifact)
    Words(String, ArtifactId),
    Sae(SaeKey, ArtifactId),
    Fit(FitKey, ArtifactId),
    Summary(SummaryKey, ArtifactId),
    /// A word-feature design (raw, sae, sae-recon, controls) of a (story, layer), recorded with
    /// `[encoding] export-designs` so the outputs can write it
    Design(DesignKey, ArtifactId),
    /// Feature-taxonomy labels of an SAE
    Labels(SaeKey, ArtifactId),
    Partition(PartitionKey, ArtifactId),
    /// The `raw+pred-error` design of a (story, layer)
    PredError(StoryLayerKey, ArtifactId),
    /// The reading-time baseline of a language's reading data (`[reading]`)
    ReadingBase(String, ArtifactId),
    /// The reading-time models of one SAE's features (`[reading]`)
    Reading(SaeKey, ArtifactId),
    /// An input subject of `[voxelwise]`: (subject, `voxel-subject` artifact)
    VoxelSubject(String, ArtifactId),
    /// The stories' designs of a (layer, feature set) as one voxelwise design (`[voxelwise]`)
    VoxelDesign(VoxelKey, ArtifactId),
    /// One subject's voxelwise fit (`[voxelwise]`)
    VoxelFit(VoxelFitKey, ArtifactId),
}

/// What flows to worker 0: state records, and at each epoch's second timestamp what the
/// processes recorded (stage errors; artifacts read or written, as store-relative paths).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Out {
    Rec(Record),
    Error(String),
    Touched(String),
}

/// The collections' contents after an epoch (sorted, so equal states compare equal).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The input stories (story, story artifact)
    pub stories: BTreeSet<(String, ArtifactId)>,
    pub responses: BTreeSet<(ResponseKey, ArtifactId)>,
    /// (story, words artifact)
    pub words: BTreeSet<(String, ArtifactId)>,
    pub saes: BTreeSet<(SaeKey, ArtifactId)>,
    pub fits: BTreeSet<(FitKey, ArtifactId)>,
    pub summaries: BTreeSet<(SummaryKey, ArtifactId)>,
    /// Word-feature designs, with `[encoding] export-designs`
    pub designs: BTreeSet<(DesignKey, ArtifactId)>,
    /// Feature-taxonomy labels per SAE, with `[taxonomy]`
    pub labels: BTreeSet<(SaeKey, ArtifactId)>,
    /// Variance partitions, with `[taxonomy] variance-partition`
    pub partitions: BTreeSet<(PartitionKey, ArtifactId)>,
    /// `raw+pred-error` designs (id = its `pred-error-record` id), with `[taxonomy]
    /// prediction-error-delta`
    pub pred_errors: BTreeSet<(StoryLayerKey, ArtifactId)>,
    /// (language, reading-base artifact), with `[reading]`
    pub reading_bases: BTreeSet<(String, ArtifactId)>,
    /// Reading-time models per SAE, with `[reading]`
    pub readings: BTreeSet<(SaeKey, ArtifactId)>,
    /// The input subjects of `[voxelwise]`
    pub voxel_subjects: BTreeSet<(String, ArtifactId)>,
    /// Voxelwise designs per (layer, feature set), with `[voxelwise]`
    pub voxel_designs: BTreeSet<(VoxelKey, ArtifactId)>,
    /// Voxelwise fits per (subject, layer, feature set), with `[voxelwise]`
    pub voxel_fits: BTreeSet<(VoxelFitKey, ArtifactId)>,
}

impl Snapshot {
    /// The snapshot holding `records`.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Snapshot {
        let mut s = Snapshot::default();
        for r in records {
            s.insert(r.clone());
        }
        s
    }

    fn insert(&mut self, r: Record) {
        match r {
            Record::Story(k, a) => _ = self.stories.insert((k, a)),
            Record::Response(k, a) => _ = self.responses.insert((k, a)),
            Record::Words(k, a) => _ = self.words.insert((k, a)),
            Record::Sae(k, a) => _ = self.saes.insert((k, a)),
            Record::Fit(k, a) => _ = self.fits.insert((k, a)),
            Record::Summary(k, a) => _ = self.summaries.insert((k, a)),
            Record::Design(k, a) => _ = self.designs.insert((k, a)),
            Record::Labels(k, a) => _ = self.labels.insert((k, a)),
            Record::Partition(k, a) => _ = self.partitions.insert((k, a)),
            Record::PredError(k, a) => _ = self.pred_errors.insert((k, a)),
            Record::ReadingBase(k, a) => _ = self.reading_bases.insert((k, a)),
            Record::Reading(k, a) => _ = self.readings.insert((k, a)),
            Record::VoxelSubject(k, a) => _ = self.voxel_subjects.insert((k, a)),
            Record::VoxelDesign(k, a) => _ = self.voxel_designs.insert((k, a)),
            Record::VoxelFit(k, a) => _ = self.voxel_fits.insert((k, a)),
        }
    }

    /// Every record of the snapshot, in a fixed order.
    pub fn records(&self) -> Vec<Record> {
        fn all<K: Clone>(
            set: &BTreeSet<(K, ArtifactId)>,
            f: fn(K, ArtifactId) -> Record,
        ) -> impl Iterator<Item = Record> + '_ {
            set.iter().map(move |(k, a)| f(k.clone(), a.clone()))
        }
        let mut v: Vec<Record> = Vec::new();
        v.extend(all(&self.stories, Record::Story));
        v.extend(all(&self.responses, Record::Response));
        v.extend(all(&self.words, Record::Words));
        v.extend(all(&self.saes, Record::Sae));
        v.extend(all(&self.fits, Record::Fit));
        v.extend(all(&self.summaries, Record::Summary));
        v.extend(all(&self.designs, Record::Design));
        v.extend(all(&self.labels, Record::Labels));
        v.extend(all(&self.partitions, Record::Partition));
        v.extend(all(&self.pred_errors, Record::PredError));
        v.extend(all(&self.reading_bases, Record::ReadingBase));
        v.extend(all(&self.readings, Record::Reading));
        v.extend(all(&self.voxel_subjects, Record::VoxelSubject));
        v.extend(all(&self.voxel_designs, Record::VoxelDesign));
        v.extend(all(&self.voxel_fits, Record::VoxelFit));
        v.sort();
        v
    }

    /// The records added (+1) and retracted (−1) going from `self` to `next`, sorted.
    pub fn changes_to(&self, next: &Snapshot) -> Vec<(Record, isize)> {
        let (a, b): (BTreeSet<Record>, BTreeSet<Record>) = (
            self.records().into_iter().collect(),
            next.records().into_iter().collect(),
        );
        let mut out: Vec<(Record, isize)> = b.difference(&a).map(|r| (r.clone(), 1)).collect();
        out.extend(a.difference(&b).map(|r| (r.clone(), -1)));
        out.sort();
        out
    }
}
