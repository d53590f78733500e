"""Tools above the services: the storeface CLI, labelled datasets, evaluation, model fetching."""
