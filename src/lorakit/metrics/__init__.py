"""Official NLG metrics over plain strings: E2E (BLEU, NIST, METEOR, ROUGE-L, CIDEr) and WebNLG/DART
(BLEU, METEOR, TER), computed the way the challenges' scorers and the LoRA paper compute them.

METEOR and the E2E scorer's tokenizer are Java programs (shipped inside pycocoevalcap); without Java,
METEOR is reported as None with a :class:`MetricsWarning` and everything else is still computed.
"""

from .e2e import E2E_METRICS, e2e_scores
from .files import MetricsFileError, MetricsWarning, read_e2e_refs, read_hypotheses
from .mteval import corpus_bleu, corpus_nist
from .webnlg import WEBNLG_METRICS, dart_scores, webnlg_scores, webnlg_scores_by_category

__all__ = ["E2E_METRICS", "WEBNLG_METRICS", "MetricsFileError", "MetricsWarning", "corpus_bleu", "corpus_nist",
           "dart_scores", "e2e_scores", "read_e2e_refs", "read_hypotheses", "webnlg_scores",
           "webnlg_scores_by_category"]
