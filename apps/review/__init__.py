"""The review app: the Streamlit page (`app`), its logic without Streamlit (`logic`), pictures (`render`),
the audit log (`audit`) and how it is started (`launch`)."""
