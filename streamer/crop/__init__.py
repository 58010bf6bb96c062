"""The crop stage: geometry, pixel conversion of crop regions, background removal, encoding."""
