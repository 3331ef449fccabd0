"""Pathology reports: label-leak scrubbing (:mod:`.scrub`), sentence splitting (:mod:`.sentences`), the
sentence-model embedder and its cache (:mod:`.embed`), the fold-fitted TF-IDF encoder (:mod:`.tfidf`) and the
leak audit (:mod:`.leak_audit`)."""
