-- Orthanc auto-routing to ichd (docs/pacs.md): send every CT series to the modality "ichd" once it is stable
-- (no new instance for StableAge seconds). Series level, and CT only: ichd's results (SR, Secondary Captures)
-- come back into the same study as new series, and must not be sent to ichd again. The send is the REST call
-- POST /modalities/ichd/store, run as an Orthanc job (Asynchronous: listed under /jobs, retried from there).
function OnStableSeries(seriesId, tags, metadata)
   if tags['Modality'] == 'CT' then
      print('ichd auto-routing: sending series ' .. seriesId .. ' to ichd')
      RestApiPost('/modalities/ichd/store', '{"Resources": ["' .. seriesId .. '"], "Asynchronous": true}')
   end
end
