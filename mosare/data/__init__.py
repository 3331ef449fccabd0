"""The cohort: every case of a cohort as aligned arrays (:mod:`.cohort`), fitted local-token prototypes
(:mod:`.local_tokens`) and the RNA helpers (:mod:`.rna`)."""
