"""Datasets in their official layouts, generators for ListOps, Pathfinder and sparse digits, and
fetching of the real data that package registries ship. See docs/data.md for every format, split
and length.

Optional packages (Pillow for Pathfinder PNGs, rdata for the Austen corpus) are imported only
by the functions that need them.
"""

from serpent_ssm.data.collate import pad_collate, pad_sequences
from serpent_ssm.data.corpus import LMWindows, load_english_corpus
from serpent_ssm.data.errors import DataFormatError
from serpent_ssm.data.fetch import FETCHABLE
from serpent_ssm.data.images import Cifar10Dataset, FashionMnistDataset
from serpent_ssm.data.listops import ListOpsDataset, generate_listops
from serpent_ssm.data.pathfinder import PathfinderDataset, generate_pathfinder
from serpent_ssm.data.sparse_digits import SparseDigitsDataset, generate_sparse_digits, informative_mask
from serpent_ssm.data.text import AanDataset, ImdbDataset, read_wikitext103
from serpent_ssm.data.vocab import BYTE_VOCAB, LISTOPS_VOCAB, Vocab

__all__ = [
    "BYTE_VOCAB",
    "FETCHABLE",
    "LISTOPS_VOCAB",
    "AanDataset",
    "Cifar10Dataset",
    "DataFormatError",
    "FashionMnistDataset",
    "ImdbDataset",
    "LMWindows",
    "ListOpsDataset",
    "PathfinderDataset",
    "SparseDigitsDataset",
    "Vocab",
    "generate_listops",
    "generate_pathfinder",
    "generate_sparse_digits",
    "informative_mask",
    "load_english_corpus",
    "pad_collate",
    "pad_sequences",
    "read_wikitext103",
]
