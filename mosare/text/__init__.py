"""Pathology reports: label-leak scrubbing (:mod:`.scrub`), sentence splitting (:mod:`.sentences`), the
sentence-model embedder and its cache (:mod:`.embed`), the fold-fitted TF-IDF encoder (:mod:`.tfidf`) and the
leak audit (:mod:`.leak_audit`)."""

# --text-encoder choices: the fold-fitted TF-IDF encoders of :mod:`.tfidf` (name -> analyzer), then the sentence model
ANALYZERS = {"tfidf": "char", "tfidf-word": "word"}
TEXT_ENCODERS = (*ANALYZERS, "minilm")
