"""Networks and model folders: the registry (``registry``), the architectures (``archs/``), importers of outside
formats (``importers/``), the model folder on disk (``folder``: config.json + model.safetensors), outside weight
files (``weight_files``), students built from a teacher (``students``, ``surgery``) and their cost in parameters
and MACs (``cost``)."""
